"""Class folders of .txt files, listed and read as Keras' text_dataset_from_directory lists them.

No TensorFlow here, so importing this is instant.
"""
import os

TEXT_FILE_SUFFIX = ".txt"  # the only files text_dataset_from_directory reads from class folders


def text_files(folder):
    """The .txt files under folder, subfolders included, in text_dataset_from_directory's order."""
    files = []
    for walk_root, _, names in sorted(os.walk(folder), key=lambda entry: entry[0]):
        files.extend(os.path.join(walk_root, name) for name in sorted(names)
                     if name.lower().endswith(TEXT_FILE_SUFFIX))
    return files


def read_text(path):
    """(text, whether it had bytes that are not UTF-8): a text that is not valid UTF-8 is read with
    U+FFFD in place of the bad bytes rather than failing the run."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True
