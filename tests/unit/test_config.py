"""Config: each script's flags derived from its fields, and values, conflicts and impossible precisions
refused before any data or model loads."""
import dataclasses
import os
import re

import pytest
from helpers import fails_with

import config
import train
from tfhub_classifier import hardware


@pytest.mark.parametrize("argv, needles", [
    (["--recipe", "tutorial", "--schedule", "linear"], ["--optimizer tutorial-adamw", "--schedule constant"]),
    (["--jit-compile", "--pipeline", "tutorial"], ["--jit-compile", "--pipeline fast"]),
    (["--recipe", "tutorial", "--jit-compile"], ["--jit-compile", "--pipeline fast"]),
])
def test_conflicts_fail_before_data_or_model_load(argv, needles, tmp_path, capsys):
    data_dir = tmp_path / "data"
    fails_with(train.main, argv + ["--data-dir", str(data_dir), "--dataset-url", "file:///nonexistent.tar.gz"],
               capsys, *needles)
    assert not data_dir.exists()  # refused before anything was downloaded or loaded


def test_tfa_without_tensorflow_addons_fails_in_validate(monkeypatch):
    real_find_spec = config.importlib.util.find_spec
    monkeypatch.setattr(config.importlib.util, "find_spec",
                        lambda name: None if name == "tensorflow_addons" else real_find_spec(name))
    with pytest.raises(ValueError, match="requirements-tfa.txt"):
        config.resolve(recipe="tutorial", optimizer="tfa")


def test_bfloat16_on_a_cpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_supports_bfloat16", lambda: False)
    with pytest.raises(ValueError, match="AVX512-BF16 or AMX"):
        config.resolve(precision="bfloat16")
    assert config.resolve(precision="auto").precision == "auto"


def test_serving_scores_in_float32_unless_bfloat16_is_asked_for(monkeypatch, capsys):
    """serve.py answers with the saved signature's float32 scores wherever it runs; the other scripts keep
    auto (bfloat16 where the CPU has it)."""
    import predict
    import serve
    monkeypatch.setattr(hardware, "cpu_supports_bfloat16", lambda: True)
    served = config.from_args(serve.parse(["--model-dir", "m"]), script=config.SERVE)
    assert served.serve_precision == "float32"
    assert config.from_args(predict.parse(["--model-dir", "m", "x"]), script=config.PREDICT).precision == "auto"
    args = serve.parse(["--model-dir", "m", "--precision", "bfloat16"])
    assert config.from_args(args, script=config.SERVE).serve_precision == "bfloat16"
    with pytest.raises(SystemExit):
        serve.parse(["--model-dir", "m", "--precision", "auto"])  # auto would mean bfloat16 here
    assert "invalid choice: 'auto'" in capsys.readouterr().err
    monkeypatch.setattr(hardware, "cpu_supports_bfloat16", lambda: False)
    with pytest.raises(ValueError, match="AVX512-BF16 or AMX.*use --precision float32"):
        config.from_args(args, script=config.SERVE)


def test_float16_without_a_gpu_is_refused_and_float16_scales_the_loss():
    from tfhub_classifier import runtime
    from tfhub_classifier.training import optimization
    if runtime.tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU, where float16 is allowed")
    with pytest.raises(ValueError, match="needs a GPU"):
        runtime.set_precision("float16")
    optimizer = optimization.make_optimizer(config.resolve(), 100, precision="float16")
    assert isinstance(optimizer, runtime.keras.mixed_precision.LossScaleOptimizer)
    plain = optimization.make_optimizer(config.resolve(), 100)
    assert not isinstance(plain, runtime.keras.mixed_precision.LossScaleOptimizer)


@pytest.mark.parametrize("script", config.SCRIPTS)
def test_help_offers_only_the_scripts_own_flags(script, capsys):
    """Each script's --help lists the flags its Config fields say it offers, and speaks of no flag it lacks."""
    module = __import__(script)
    with pytest.raises(SystemExit):
        module.parse(["--help"])
    shown = capsys.readouterr().out
    offered = {config.flag_name(name, script) for name in config.field_names(script)}
    listed = set(re.findall(r"--([a-z0-9-]+)", shown.split("\n\n")[0]))  # the usage line names them all
    aliases = {spec.metadata["alias"][script] for spec in dataclasses.fields(config.Config)
               if script in spec.metadata["alias"]}  # another spelling of an offered flag
    assert offered <= listed
    assert not (listed - offered) & {config.flag_name(name) for name in config.field_names()} - {"batch-size"}
    mentioned = set(re.findall(r"--([a-z][a-z0-9-]*)", shown))
    assert mentioned <= listed | aliases | {"help"}, mentioned - listed - {"help"}


def test_validation_checks_only_the_flags_a_script_offers():
    bad_port = dataclasses.replace(config.Config(), port=0)
    assert bad_port.validate(config.TRAIN) is bad_port  # train.py has no --port to blame
    with pytest.raises(ValueError, match="--port must be between 1 and 65535"):
        bad_port.validate(config.SERVE)
    small_batch = dataclasses.replace(config.Config(), eval_batch_size=0)
    with pytest.raises(ValueError, match="--batch-size must be at least 1"):
        small_batch.validate(config.PREDICT)  # the flag predict.py names it by
    with pytest.raises(ValueError, match="--eval-batch-size must be at least 1"):
        small_batch.validate(config.TRAIN)


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("flags", [["--strategy", "multiworker", "--collective-timeout-s"], ["--weight-decay"],
                                   ["--learning-rate"]])
def test_a_number_must_be_finite(flags, value, capsys):
    """float("nan") passes every comparison with a bound, and an infinite timeout waits forever: both are
    refused in one line, before anything loads."""
    fails_with(train.main, flags + [value], capsys, f"{flags[-1]} must be a finite number, got {float(value)}")


def test_a_resume_compares_every_setting_but_those_marked_otherwise():
    """The fields a resume ignores are the ones that change neither the weights nor the data."""
    assert set(config.field_names(resumes=False)) == {
        "eval_batch_size", "tensorboard", "plots_dir", "checkpoint_every", "restart", "debug", "require_gpu",
        "model_dir", "data_dir", "collective_timeout_s",
        "calibrate", "threshold_metric"}  # the last two are fitted after training


def test_one_column_for_both_text_and_label_is_refused():
    with pytest.raises(ValueError, match="--text-column and --label-column both name 'body'"):
        config.resolve(text_column="body", label_column="body")


def test_your_own_data_gets_a_model_dir_of_its_own():
    """train.py --train-data tickets.csv saves to models/tickets, not onto the IMDB model."""
    import train
    argv = ["--train-data", "data/tickets.csv", "--test-data", "data/tickets_test.csv"]
    assert config.from_args(train.parse(argv), script=config.TRAIN).model_dir == os.path.join("models", "tickets")
    assert config.from_args(train.parse(["--train-data", "corpus/"]), script=config.TRAIN).model_dir == os.path.join(
        "models", "corpus")
    given = train.parse(argv + ["--model-dir", "models/mine"])
    assert config.from_args(given, script=config.TRAIN).model_dir == "models/mine"
    assert config.from_args(train.parse([]), script=config.TRAIN).model_dir == "models/imdb_bert"
    # A generic file name takes its folder's: two data sets' train.csv don't share a model folder.
    assert config.default_model_dir("data/sst2/train.tsv") == os.path.join("models", "sst2_train")
    assert config.default_model_dir(".") == os.path.join("models", os.path.basename(os.getcwd()))


def test_an_unknown_encoding_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="unknown --encoding 'utf-9'.*utf-8:replace"):
        config.resolve(encoding="utf-9")
    assert config.resolve(encoding="cp1252").encoding == "cp1252"


def test_a_delimiter_is_one_character():
    with pytest.raises(ValueError, match="--delimiter takes one character"):
        config.resolve(delimiter=";;")


@pytest.mark.parametrize("extra, message", [
    ([], "--stratify is for your own --train-data; IMDB's validation split stays the tutorial's"),
    (["--train-data", "a.csv", "--test-data", "b.csv", "--validation-data", "c.csv"],
     "--stratify cuts --validation-split from the training data; with --validation-data there is no cut"),
])
def test_stratify_is_refused_where_there_is_no_cut_of_your_own(extra, message, capsys):
    fails_with(train.main, ["--stratify"] + extra, capsys, message)


def test_no_flag_is_taken_for_an_abbreviation_of_another(capsys):
    """--threshold is evaluate.py's; train.py must not read it as --threshold-metric."""
    with pytest.raises(SystemExit):
        train.parse(["--threshold", "0.7"])
    assert "unrecognized arguments: --threshold 0.7" in capsys.readouterr().err
