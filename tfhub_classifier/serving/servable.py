"""The model behind the REST API: a saved classifier loaded once, scoring texts into TensorFlow
Serving's outputs plus the label fields predict.py's JSON Lines give. TensorFlow loads only in
Servable.load, so flag and port errors come at once."""
from tfhub_classifier.serving import protocol


class Servable:
    """The loaded model and what its answers say: texts (str or bytes) -> one JSON result each."""

    def __init__(self, model, record, task, threshold, top_k, batch_size, signature_defs=None, precision="float32",
                 explainer=None, engine="savedmodel", attention=None):
        self.model, self.record, self.task, self.explainer = model, record, task, explainer
        self.engine = engine  # in force (a fused graph that could not be built falls back to savedmodel)
        self.attention = attention  # how a fused graph runs attention (engines.attention_in_use), else None
        self.threshold, self.top_k, self.batch_size = threshold, top_k, batch_size
        self.signature_defs = signature_defs or {}  # the SavedModel's, as TF Serving's metadata gives them
        self.precision = precision  # in force: bfloat16 scores differ slightly from the saved signature's

    @classmethod
    def load(cls, cfg, log=print):
        # TensorFlow loads here, once the flags and the port are known to be good.
        from tfhub_classifier.inference import engines, prediction
        from tfhub_classifier.model import saving
        model, record, precision = engines.load(cfg.model_dir, cfg.serve_precision, cfg.engine, log)
        task = saving.task_of_record(record)
        prediction.check_top_k(task, cfg.top_k)
        threshold = saving.threshold_in_use(cfg.threshold, record)
        from tfhub_classifier.inference import attribution
        servable = cls(model, record, task, threshold, cfg.top_k, cfg.serve_batch_size,
                       protocol.signature_defs(cfg.model_dir), precision,
                       attribution.Explainer.of_record(model, record, task, "occlusion"),
                       engines.in_use(model, cfg.engine), engines.attention_in_use(model))
        servable.score(["A warm-up review, so the first request is not the one that waits."])
        log(f"Loaded {cfg.model_dir} ({task.kind}: {', '.join(task.label_names)}; {precision})")
        return servable

    def score(self, texts):
        """One JSON result per text; a model call per batch_size texts (one call from the Batcher)."""
        from tfhub_classifier.inference import scoring
        logits = scoring.logits_of(self.model, texts, self.batch_size)
        return [self.result(probabilities) for probabilities in self.task.probabilities(logits)]

    def explain(self, texts):
        """score's results, each with the words that drove its label (attribution.Explanation's fields)."""
        from tfhub_classifier.inference import prediction, scoring
        probabilities = self.task.probabilities(scoring.logits_of(self.model, texts, self.batch_size))
        labels = prediction.explained_labels(self.task, probabilities, self.threshold)
        explanations = self.explainer.explain(texts, labels)
        return [{**self.result(p), **why.as_json(self.task.label_names)} for p, why in zip(probabilities, explanations)]

    def result(self, probabilities):
        """serving_default's outputs for one text, then predict.py's --format jsonl fields."""
        import numpy as np

        from tfhub_classifier.inference import prediction
        # Labels as label_names has them (IMDB: pos, not predict.py's "positive"), so each is one of those.
        result = prediction.labelled(self.task, probabilities, self.threshold, self.top_k, self.task.label_names)
        result.pop("probabilities", None)  # multi-label's {name: probability}: given as the signature's list
        values = np.atleast_1d(np.asarray(probabilities, dtype=np.float32)).tolist()
        values = [float(f"{value:.7g}") for value in values]  # float32's digits, not float64's noise
        return {**result, "probabilities": values[0] if self.task.kind == "binary" else values,
                "label_names": list(self.task.label_names)}
