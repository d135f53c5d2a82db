"""How every script ends: a result, or a one-line error that names the fix and a non-zero exit."""
import os
import shutil
import sys

RUN_RECORD = "run.json"  # written beside saved_model.pb by train.py

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def run(main, argv=None):
    """Call main(argv); turn the errors a user can fix into one line on stderr and an exit code."""
    try:
        main(argv)
    except ValueError as error:  # bad values: the message says what to do
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:  # disk full, read-only folder, missing file
        print(f"error: {error.strerror or error}: {error.filename or ''}".rstrip(": ")
              + " (check the path, its permissions and free space)", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted: nothing was overwritten; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def previous_model_dir(model_dir):
    """Where a save parks the old model between its two renames."""
    return model_dir.rstrip("/") + ".previous"


def require_model_dir(model_dir):
    """ValueError unless model_dir holds a classifier saved by train.py (checked before
    TensorFlow loads, so the error comes at once)."""
    if not os.path.isdir(model_dir) and not os.path.isdir(previous_model_dir(model_dir)):
        raise ValueError(f"no model at --model-dir {model_dir}; train one with `python train.py "
                         f"--model-dir {model_dir}` or point at an existing one")
    if os.path.isdir(model_dir) and not all(
            os.path.isfile(os.path.join(model_dir, name)) for name in ("saved_model.pb", RUN_RECORD)):
        raise ValueError(f"{model_dir} is not a classifier saved by train.py (no saved_model.pb and "
                         f"{RUN_RECORD}); point --model-dir at one")
    return model_dir


def remove_leftovers(parent, prefix):
    """Delete the temporary folders that a killed save or extraction left behind."""
    for name in os.listdir(parent):
        if name.startswith(prefix):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
