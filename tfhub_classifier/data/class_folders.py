"""Class folders of .txt files, listed and read as Keras' text_dataset_from_directory lists them.

No TensorFlow here, so importing this is instant.
"""
import os

TEXT_FILE_SUFFIX = ".txt"  # the only files text_dataset_from_directory reads from class folders
REPLACING_ENCODING = "utf-8:replace"  # --encoding's name for UTF-8 that reads undecodable bytes as U+FFFD


def text_files(folder):
    """The .txt files under folder, subfolders included, in text_dataset_from_directory's order."""
    files = []
    for walk_root, _, names in sorted(os.walk(folder), key=lambda entry: entry[0]):
        files.extend(os.path.join(walk_root, name) for name in sorted(names)
                     if name.lower().endswith(TEXT_FILE_SUFFIX))
    return files


def read_text(path, encoding=REPLACING_ENCODING):
    """(text, whether it had bytes that are not UTF-8). With REPLACING_ENCODING, a text that is not
    valid UTF-8 is read with U+FFFD in place of the bad bytes; with another encoding, a byte it can't
    decode is a ValueError naming the file and the encoding that most likely reads it."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8" if encoding == REPLACING_ENCODING else encoding), False
    except UnicodeDecodeError as error:
        if encoding == REPLACING_ENCODING:
            return data.decode("utf-8", errors="replace"), True
        raise undecodable(path, encoding, data, error.object[error.start]) from None


def likely_encoding(data):
    """The first of UTF-8 and what Excel on Windows writes (cp1252) that decodes data, else latin-1,
    which decodes any bytes."""
    for encoding in ("utf-8", "cp1252"):
        try:
            data.decode(encoding)
            return encoding
        except UnicodeDecodeError:
            pass
    return "latin-1"


def undecodable(where, encoding, data, byte):
    """The ValueError for data that encoding can't decode (at byte), naming where and the likely fix."""
    return ValueError(f"{where}: not {encoding} (byte 0x{byte:02x}); pass --encoding "
                      f"{likely_encoding(data)} if that is how it was saved, or --encoding {REPLACING_ENCODING} "
                      "to read such bytes as U+FFFD")
