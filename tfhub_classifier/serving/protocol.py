"""TensorFlow Serving's REST protocol, as its source has it (http_rest_api_handler.cc, json_tensor.cc):
the texts of a request in the row ("instances") or columnar ("inputs") format, each given as a JSON
string or {"b64": "..."}; the columnar answer; and the exact shapes of the model status and metadata
answers that strict clients parse. Errors are RequestError, answered as {"error": message}.
"""
import base64
import binascii
import json
import os
import re
import sys
import urllib.parse

MODEL_VERSION = "1"  # one model, served as the version TensorFlow Serving gives a model's first export
SIGNATURE = "serving_default"
INPUT_NAME = "text"  # as the exported SavedModel's serving_default names its input
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
              bool: "true/false", type(None): "null"}


class RequestError(Exception):
    """A request the server refuses: answered as {"error": message} with status."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def signature_defs(model_dir):
    """Every SignatureDef of the SavedModel as TensorFlow Serving's metadata prints it: copied from
    saved_model.pb, proto field names kept and empty fields printed."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(model_dir, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    signatures = saved.meta_graphs[0].signature_def if saved.meta_graphs else {}
    return {name: json_format.MessageToDict(signature, always_print_fields_with_no_presence=True,
                                            preserving_proto_field_name=True)
            for name, signature in sorted(signatures.items())}


def parse_json(body):
    """The JSON of a UTF-8 body; RequestError (400) naming what is wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(400, f"the request body is not valid UTF-8 (byte 0x{body[error.start]:02x} at "
                                f"offset {error.start}); send JSON encoded as UTF-8") from None
    if not text.strip():
        raise RequestError(400, 'the request body is empty; send JSON like {"instances": ["a review"]}')
    try:
        return json.loads(text, object_pairs_hook=_first_of_each_key)
    except json.JSONDecodeError as error:
        raise RequestError(400, f"the request body is not valid JSON: {error.msg} at line {error.lineno} "
                                f"column {error.colno}") from None
    except RecursionError:
        raise RequestError(400, "the request body's JSON is nested too deeply") from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits())
        raise RequestError(400, f"the request body's JSON has a number of over {sys.get_int_max_str_digits():,} "
                                "digits; send texts as JSON strings") from None


def _first_of_each_key(pairs):
    """A JSON object whose repeated keys keep their first value, as TensorFlow Serving's parser does."""
    result = {}
    for key, value in pairs:
        result.setdefault(key, value)
    return result


def texts_of_request(payload, max_text_chars, max_texts):
    """(texts, columnar) of a predict request in TensorFlow Serving's row ("instances": each a text
    or {"text": ...}) or columnar ("inputs": a list of texts or {"text": [...]}) format; a text is
    a string, or {"b64": ...} for its bytes."""
    if not isinstance(payload, dict):
        raise RequestError(400, f'the request must be a JSON object like {{"instances": ["a review"]}}, '
                                f"got {_json_type(payload)}")
    signature = payload.get("signature_name", SIGNATURE)
    if not isinstance(signature, str):
        raise RequestError(400, "'signature_name' key must be a string value.")
    if signature not in (SIGNATURE, ""):
        raise RequestError(400, f'Serving signature name: "{signature}" not found in signature def; '
                                f'this model has "{SIGNATURE}" only')
    # Other top-level keys ("parameters", ...) are ignored, as TensorFlow Serving ignores them.
    if ("instances" in payload) == ("inputs" in payload):
        raise RequestError(400, 'give the texts as "instances" (row format) or as "inputs" (columnar '
                                'format): one of them, not ' + ("both" if "inputs" in payload else "neither"))
    columnar = "inputs" in payload
    key = "inputs" if columnar else "instances"
    values = payload[key]
    if columnar and isinstance(values, dict) and not _is_b64(values):
        if set(values) != {INPUT_NAME}:
            raise RequestError(400, f'"inputs" as an object takes the one input "{INPUT_NAME}", got '
                                    f"{', '.join(map(json.dumps, values)) or 'none'}")
        key, values = f"inputs.{INPUT_NAME}", values[INPUT_NAME]
    if not isinstance(values, list):
        raise RequestError(400, f'"{key}" must be a list of texts, got {_json_type(values)}')
    if not values:
        raise RequestError(400, f'"{key}" is empty; send at least one text')
    if len(values) > max_texts:
        raise RequestError(400, f'"{key}" has {len(values):,} texts, over --max-texts-per-request {max_texts:,}; '
                                "send fewer per request (predict.py --file scores many)")
    if not columnar:
        named = [isinstance(value, dict) and not _is_b64(value) for value in values]
        if any(named) and not all(named):
            first = named.index(not named[0])
            raise RequestError(400, f"instances[{first}] is {'an object' if named[first] else 'a text'} where "
                                    f"instances[0] is {'an object' if named[0] else 'a text'}; the row format "
                                    'takes texts, or {"text": ...} objects, not both in one request')
    texts = [_text_of(f"{key}[{i}]", value, rows=not columnar) for i, value in enumerate(values)]
    for i, text in enumerate(texts):
        if len(text) > max_text_chars:
            unit = "bytes" if isinstance(text, bytes) else "characters"
            raise RequestError(400, f"{key}[{i}] has {len(text):,} {unit}, over --max-text-chars "
                                    f"{max_text_chars:,}; send it shorter")
    return texts, columnar


def _is_b64(value):
    return isinstance(value, dict) and set(value) == {"b64"}


def _text_of(where, value, rows):
    if rows and isinstance(value, dict) and not _is_b64(value):  # the row format with named inputs
        if set(value) != {INPUT_NAME}:
            raise RequestError(400, f'{where} must have the one input "{INPUT_NAME}", got '
                                    f"{', '.join(map(json.dumps, value)) or 'none'}")
        where, value = f"{where}.{INPUT_NAME}", value[INPUT_NAME]
    if _is_b64(value):
        encoded = value["b64"]
        try:
            if not isinstance(encoded, str):
                raise ValueError(f"got {_json_type(encoded)}, not a string")
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as error:
            raise RequestError(400, f"{where}.b64 is not base64 ({error}); give the text's bytes in "
                                    "standard base64") from None
    if not isinstance(value, str):
        raise RequestError(400, f'{where} must be a text (a JSON string or {{"b64": "..."}})'
                                + (f' or {{"{INPUT_NAME}": ...}}' if rows else "") + f", got {_json_type(value)}")
    # JSON may escape half a surrogate pair ("\ud83d"): no character, and no UTF-8 for it; as the suite
    # reads invalid text everywhere, it becomes U+FFFD (else the answer that echoes words could not be sent).
    return LONE_SURROGATE.sub("\ufffd", value)


def _json_type(value):
    return JSON_TYPES.get(type(value), type(value).__name__)


def as_columns(results):
    """Row results -> one list per output, as TensorFlow Serving answers a columnar request with
    several named outputs: {"outputs": {name: [value of each text]}}."""
    return {name: [result[name] for result in results] for name in results[0]}


def model_status():
    """TensorFlow Serving's GetModelStatusResponse, exactly (strict clients parse it)."""
    return {"model_version_status": [{"version": MODEL_VERSION, "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


def model_metadata(name, servable):
    """TensorFlow Serving's GetModelMetadataResponse, as its REST API prints it: the SavedModel's
    signatures and nothing else (the predict answers' extra fields are the suite's, documented)."""
    return {"model_spec": {"name": name, "signature_name": "", "version": MODEL_VERSION},
            "metadata": {"signature_def": {"signature_def": servable.signature_defs}}}


def model_record(name, servable):
    """What TensorFlow Serving has no answer for: the task, the labelling flags, the run record (as
    public_record leaves it)."""
    task = servable.task
    return {"model_spec": {"name": name, "version": MODEL_VERSION},
            "task": {"kind": task.kind, "label_names": list(task.label_names)},
            "threshold": servable.threshold, "top_k": servable.top_k, "run_record": public_record(servable.record)}


def public_record(value):
    """A run record fit to serve: every local path cut to its last part (the server's folders are no
    client's business) and every URL stripped of its user, password, query and fragment (where tokens
    ride)."""
    if isinstance(value, dict):
        return {key: public_record(item) for key, item in value.items()}
    if isinstance(value, list):
        return [public_record(item) for item in value]
    if not isinstance(value, str):
        return value
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError:  # not a URL after all (an unclosed "[", a port past 65535): cut like a path
        return os.path.basename(value.rstrip("/")) or "/"
    if parts.scheme and parts.netloc:
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
        return urllib.parse.urlunsplit((parts.scheme, host + (f":{port}" if port else ""), parts.path, "", ""))
    if parts.scheme == "file" or os.path.isabs(value) or value.startswith("~"):
        return os.path.basename(value.rstrip("/")) or "/"
    return value
