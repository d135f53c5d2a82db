"""The IMDB reviews: download once, verify, extract atomically, split as the tutorial does."""
import dataclasses
import hashlib
import os
import shutil
import tarfile

import numpy as np

import config
from tfhub_classifier import files
from tfhub_classifier.data import class_folders
from tfhub_classifier.data.split import Split, shuffled_order

CLASS_NAMES = ("neg", "pos")  # label 0 and 1, sorted as text_dataset_from_directory sorts them
DISPLAY_NAMES = ("negative", "positive")  # how predictions name them
ARCHIVE_NAME = "aclImdb_v1.tar.gz"
DATASET_NAME = "aclImdb"


def md5_of(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_layout(root):
    """Raise ValueError unless root holds train/ and test/, each with neg/ and pos/ reviews."""
    missing = [os.path.join(split, label) for split in ("train", "test") for label in CLASS_NAMES
               if not os.path.isdir(os.path.join(root, split, label))]
    if missing:
        raise ValueError(f"{root} is not an IMDB dataset (missing {', '.join(missing)}); point --data-dir "
                         "at a folder holding aclImdb/ or an empty one to download into")


def _verify_archive(path, expected_md5):
    """Delete the archive and raise ValueError if it is corrupt or truncated."""
    problem = None
    if expected_md5:
        actual = md5_of(path)
        if actual != expected_md5.lower():
            problem = f"its MD5 is {actual}, expected {expected_md5}"
    else:
        try:  # gzip's CRC and tar's headers catch a truncated or corrupt file
            with tarfile.open(path, "r:gz") as archive:
                for _ in archive:
                    pass
        except (tarfile.TarError, OSError, EOFError) as error:
            problem = f"it cannot be read ({error})"
    if problem:
        os.remove(path)
        raise ValueError(f"the downloaded {os.path.basename(path)} is corrupt: {problem}. It was deleted; "
                         "run again to download it afresh, or check --dataset-url/--dataset-md5")


def download_archive(data_dir, url, md5=""):
    """The archive in data_dir, downloaded with tf.keras.utils.get_file unless already there."""
    from tfhub_classifier.runtime import keras
    expected_md5 = md5 or (config.OFFICIAL_DATASET_MD5 if url == config.OFFICIAL_DATASET_URL else "")
    path = os.path.join(os.path.abspath(data_dir), ARCHIVE_NAME)
    if os.path.exists(path):
        _verify_archive(path, expected_md5)  # a killed earlier download leaves a truncated file
        return path
    try:
        path = keras.utils.get_file(ARCHIVE_NAME, origin=url, cache_dir=os.path.abspath(data_dir),
                                    cache_subdir="")
    except Exception as error:  # get_file wraps network errors in a bare Exception
        raise ValueError(f"could not download {url} ({str(error).splitlines()[0]}); this machine may be "
                         f"offline: fetch {ARCHIVE_NAME} elsewhere and pass --dataset-url file:///path/to/"
                         f"{ARCHIVE_NAME}, or extract it so that --data-dir holds {DATASET_NAME}/") from None
    _verify_archive(path, expected_md5)
    return path


def extract_safely(archive, members, destination):
    """Extract members into destination, refusing (ValueError) any that would write outside it."""
    if hasattr(tarfile, "data_filter"):
        try:
            archive.extractall(destination, members=members, filter="data")
        except tarfile.FilterError as error:
            raise _unsafe_member(archive, error.tarinfo.name, str(error)) from None
    else:  # Python < 3.9.17, 3.10.12 or 3.11.4: no filter= argument, so check each member by hand first
        for member in members:
            _check_member(archive, member)
            member.mode &= 0o755  # as filter="data" does: no setuid, setgid or writable-by-others files
        archive.extractall(destination, members=members)


def _check_member(archive, member):
    """ValueError for a member with an absolute path or '..', a link leading out, or a device file."""
    if _leads_outside(member.name):
        raise _unsafe_member(archive, member.name, "its path leads outside the folder it is extracted to")
    if member.issym() or member.islnk():
        # Only a target without '..' that is not absolute surely stays inside, even through other links.
        if _leads_outside(member.linkname):
            raise _unsafe_member(archive, member.name, f"it links to {member.linkname}, which may lead outside "
                                 "the folder it is extracted to")
    elif not (member.isfile() or member.isdir()):
        raise _unsafe_member(archive, member.name, "it is a device file or pipe, not a file or folder")


def _leads_outside(path):
    parts = path.replace("\\", "/").split("/")
    return os.path.isabs(path) or path.startswith(("/", "\\")) or ".." in parts


def _unsafe_member(archive, name, reason):
    return ValueError(f"{archive.name} holds an unsafe member {name!r} ({reason}), so it was not extracted; "
                      "it is not the IMDB archive: delete it and check --dataset-url")


def _extract(archive_path, data_dir):
    """Extract into a staging folder beside the target and rename it into place when whole,
    leaving out train/unsup, which text_dataset_from_directory would count as a third class."""
    target = os.path.join(data_dir, DATASET_NAME)
    with files.staging_folder(target, "partial") as staging:
        with tarfile.open(archive_path, "r:gz") as archive:
            members = [m for m in archive.getmembers()
                       if not m.name.replace("\\", "/").split("/")[1:3] == ["train", "unsup"]]
            extract_safely(archive, members, staging)
        check_layout(os.path.join(staging, DATASET_NAME))
        os.rename(os.path.join(staging, DATASET_NAME), target)
    return target


def prepare(data_dir, url=config.OFFICIAL_DATASET_URL, md5=""):
    """The aclImdb folder under data_dir, downloading and extracting it the first time."""
    os.makedirs(data_dir, exist_ok=True)
    root = os.path.join(data_dir, DATASET_NAME)
    if not os.path.isdir(root):
        _extract(download_archive(data_dir, url, md5), data_dir)
    check_layout(root)
    shutil.rmtree(os.path.join(root, "train", "unsup"), ignore_errors=True)  # an aclImdb/ extracted by hand
    return root


def list_reviews(directory, seed):
    """File paths and labels of directory/{neg,pos}, shuffled exactly as the tutorial's
    text_dataset_from_directory(seed=seed) shuffles them, so the splits are the same."""
    paths, labels = [], []
    for label, name in enumerate(CLASS_NAMES):
        files = class_folders.text_files(os.path.join(directory, name))
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"no reviews found in {directory}/neg or /pos; delete {directory} so it is "
                         "extracted again, or point --data-dir at a complete copy")
    order = shuffled_order(len(paths), seed)
    return [paths[i] for i in order], np.asarray(labels, dtype=np.int32)[order]


def _listed(directory, seed):
    """An unread Split of directory's reviews: their paths stand in for the texts until _read."""
    paths, labels = list_reviews(directory, seed)
    return Split(paths, labels, paths, CLASS_NAMES, "binary")


def _read(listed, max_examples):
    """The first max_examples reviews of a listed Split (all for 0), read."""
    listed = listed.capped(max_examples)
    return dataclasses.replace(listed, texts=[class_folders.read_text(path)[0] for path in listed.paths])


def load_splits(cfg, with_train=True, caps=None):
    """Train, validation and test Splits for a Config (train/val None unless with_train).
    caps = (train, validation, test) sizes overrides cfg.max_examples per split."""
    train_cap, validation_cap, test_cap = caps or (cfg.max_examples,) * 3
    root = prepare(cfg.data_dir, cfg.dataset_url, cfg.dataset_md5)
    test = _read(_listed(os.path.join(root, "test"), cfg.seed), test_cap)
    if not with_train:
        return None, None, test
    train, validation = _listed(os.path.join(root, "train"), cfg.seed).held_out(
        cfg.validation_split, os.path.join(root, "train"), alternative="")  # IMDB has no --validation-data
    return _read(train, train_cap), _read(validation, validation_cap), test
