"""Reports without training: metrics against scikit-learn's, the model catalogue."""
import numpy as np
import pytest
from sklearn import metrics as sk

import config
import train
from tfhub_classifier.inference import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    logits = rng.normal(labels * 1.5 - 0.75, 1.5).round(1)  # rounding makes ties, which AUC must handle
    ours = metrics.binary_metrics(labels, logits)
    predicted = (1 / (1 + np.exp(-logits)) >= 0.5).astype(int)
    assert ours["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert ours["precision"] == pytest.approx(sk.precision_score(labels, predicted))
    assert ours["recall"] == pytest.approx(sk.recall_score(labels, predicted))
    assert ours["f1"] == pytest.approx(sk.f1_score(labels, predicted))
    assert ours["roc_auc"] == pytest.approx(sk.roc_auc_score(labels, logits))
    assert ours["confusion_matrix"] == sk.confusion_matrix(labels, predicted).tolist()
    assert ours["loss"] == pytest.approx(sk.log_loss(labels, 1 / (1 + np.exp(-logits))), rel=1e-6)


def test_list_models(capsys):
    catalogue = train.main(["--list-models"])
    out = capsys.readouterr().out
    assert len(catalogue) == 33 and sum(name.startswith("small_bert/") for name in catalogue) == 24
    assert "small_bert/bert_en_uncased_L-4_H-512_A-8" in out
    assert config.BERT_PREPROCESSORS["bert_multi_cased_L-12_H-768_A-12"] in out
    assert "kaggle.com/models/tensorflow/bert/TensorFlow2/bert-en-uncased-l-4-h-512-a-8/2" in out


def test_the_tutorials_other_encoders_come_with_their_preprocessors():
    """--bert-model electra_small and the rest of the tutorial's map_name_to_handle, each with the
    preprocessor its map_model_to_preprocess names: ALBERT its own SentencePiece one, the others BERT's."""
    expected = {"albert_en_base": ("tensorflow/albert_en_base/2", "tensorflow/albert_en_preprocess/3"),
                "electra_small": ("google/electra_small/2", "tensorflow/bert_en_uncased_preprocess/3"),
                "electra_base": ("google/electra_base/2", "tensorflow/bert_en_uncased_preprocess/3"),
                "experts_pubmed": ("google/experts/bert/pubmed/2", "tensorflow/bert_en_uncased_preprocess/3"),
                "experts_wiki_books": ("google/experts/bert/wiki_books/2",
                                       "tensorflow/bert_en_uncased_preprocess/3"),
                "talking-heads_base": ("tensorflow/talkheads_ggelu_bert_en_base/1",
                                       "tensorflow/bert_en_uncased_preprocess/3")}
    for name, (encoder, preprocessor) in expected.items():
        cfg = config.resolve(bert_model=name)
        assert (cfg.encoder_handle(), cfg.preprocessor_handle()) == (
            f"https://tfhub.dev/{encoder}", f"https://tfhub.dev/{preprocessor}"), name
