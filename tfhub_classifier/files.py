"""Writing atomically: whatever the suite writes is staged beside its final name and renamed into place
when whole, so a kill or a full disk never leaves half a model, dataset, export or checkpoint record.

No TensorFlow here, so importing this is instant.
"""
import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time


@contextlib.contextmanager
def staging_folder(target, purpose, private=False, clear_leftovers=True):
    """A new, empty folder beside target (".NAME.PURPOSE-XXXXXXXXXXXX") for the caller to fill and then
    rename into place as it needs (replacing target, or only if target is free); removed with whatever
    is left in it when the block ends. private: only its owner may read it (mode 0700), else the umask's
    permissions apply. clear_leftovers: first remove the staging folders a killed earlier attempt left."""
    target = os.path.abspath(target)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    prefix = f".{os.path.basename(target)}.{purpose}-"
    if clear_leftovers:
        remove_leftovers(parent, prefix)
    staging = os.path.join(parent, prefix + secrets.token_hex(6))
    os.mkdir(staging, 0o700 if private else 0o777)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # already renamed away, unless the block failed


def remove_leftovers(parent, prefix):
    """Delete the staging folders that a killed write left in parent: never trusted, never resumed."""
    for name in os.listdir(parent):
        if name.startswith(prefix):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def write_json(path, value):
    """Write value as JSON by write_bytes: a kill or a full disk never leaves half a file."""
    return write_bytes(path, json.dumps(value, indent=2).encode("utf-8"))


def write_bytes(path, content):
    """Write content beside its final name (a name of this call's own, so two writers never mix) and
    rename it into place; on any error nothing is left behind."""
    partial = f"{path}.{secrets.token_hex(6)}.partial"
    try:
        with open(partial, "wb") as f:
            f.write(content)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path


STALE_PARTIAL_S = 3600  # a .partial file being written is younger: another process may be writing it


def remove_stale_partials(folder, older_than_s=STALE_PARTIAL_S):
    """Delete the .partial files write_bytes left in folder when killed, if older than older_than_s seconds."""
    now = time.time()
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        try:
            if name.endswith(".partial") and now - os.path.getmtime(path) > older_than_s:
                os.remove(path)
        except OSError:
            pass  # removed meanwhile by another process


def check_writable(directory, flag, value=None):
    """Create directory if needed and prove a file can be written in it; ValueError naming the flag if not."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ValueError(f"{flag} {value or directory}: {directory} is not writable ({error.strerror}); "
                         "pick a folder you can write to") from None
