"""TF-Hub models (preprocessor and encoder): loaded from a URL, the cache or a local folder."""
import hashlib
import os
import shutil

from tfhub_classifier.runtime import hub


def _hub_cache_entry(handle):
    """The folder tensorflow_hub caches a URL handle in (a sha1 of the handle)."""
    return os.path.join(os.environ["TFHUB_CACHE_DIR"], hashlib.sha1(handle.encode("utf8")).hexdigest())


def load_hub_model(handle, flag, log=print, passes=lambda error: False):
    """hub.load(handle), with one-line errors that say what to do; an error for which passes(error) is
    true is raised as it is (under a multi-worker strategy, a lost peer: the caller names it)."""
    is_url = "://" in handle and not handle.startswith("file://")
    if not is_url:
        path = handle[len("file://"):] if handle.startswith("file://") else handle
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"{flag} {handle} is neither a known URL nor a SavedModel directory "
                             "(no saved_model.pb in it); pass a TF-Hub/Kaggle handle or a local model dir")
        handle = path
    else:
        cached = _hub_cache_entry(handle)
        if os.path.isdir(cached) and not os.path.isfile(os.path.join(cached, "saved_model.pb")):
            log(f"The TF-Hub cache entry {cached} for {handle} is incomplete (no saved_model.pb); "
                "removing it and downloading again.")
            shutil.rmtree(cached, ignore_errors=True)
            for stale in (cached + ".descriptor.txt", cached + ".lock"):
                if os.path.exists(stale):
                    os.remove(stale)
    try:
        return hub.load(handle)
    except Exception as error:  # hub raises many types for a network failure
        if passes(error):
            raise
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"could not load {flag} {handle} ({reason[:200]}); this machine may be offline: "
                         f"download the model elsewhere and pass {flag} /path/to/saved_model_dir, or set "
                         "TFHUB_CACHE_DIR to a cache that holds it") from None


def max_seq_length(encoder):
    """Positions the encoder was pre-trained for (its position-embedding table), 512 if unknown."""
    for variable in encoder.variables:
        if "position_embedding" in variable.name and len(variable.shape) == 2:
            return int(variable.shape[0])
    return 512
