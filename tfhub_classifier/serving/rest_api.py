"""A saved classifier behind TensorFlow Serving's REST API, with concurrent requests batched.

    POST /v1/models/NAME[/versions/1]:predict   {"instances": [...]} -> {"predictions": [...]}
                                                {"inputs": [...]}    -> {"outputs": {...}}
    GET  /v1/models/NAME[/versions/1]           TensorFlow Serving's model_version_status, exactly
    GET  /v1/models/NAME[/versions/1]/metadata  TensorFlow Serving's signature_def of serving_default
    GET  /v1/models/NAME[/versions/1]/record    not TensorFlow Serving's: the task, --threshold, --top-k
                                                and the run record the model was saved with
    GET  /healthz                               200 once the model is loaded and warmed up, with the
                                                model calls made and texts scored, queued and dropped;
                                                503 if the Batcher has died

A text is a JSON string or TensorFlow Serving's {"b64": "..."} (its decoded bytes are the text),
given as itself or as {"text": ...} in the row format. Each prediction holds the saved model's
serving_default outputs, `probabilities` (binary: the positive label's, a number; otherwise one
per label) and `label_names`, plus the label fields predict.py's --format jsonl writes (binary:
score and label; multi-class: label and probability, and top_k with --top-k over 1; multi-label:
labels); the columnar format answers each of them as a list, one value per text.

The status and metadata answers have TensorFlow Serving's exact shapes: strict clients parse them.
Metadata describes every output that is a dense tensor with its dtype and shape (batch = -1) and
the saved signature's tensor names; top_k and labels, lists whose length varies, are not tensors
and are left out, as is TensorFlow Serving's "@type" (its REST handler unpacks the Any holding the
SignatureDefMap, so its answer has none either). The run record, which TensorFlow Serving has no
place for, is under /record.

Errors are TensorFlow Serving's `{"error": "..."}`: 4xx for the request's fault, 503 when the
queue is full (--max-queued-texts, as TensorFlow Serving's max_enqueued_batches) or the Batcher
has died, 500 when a model call fails. Texts from concurrent requests share model calls
(`Batcher`), scored one call at a time in a worker thread by the suite's fast path
(scoring.logits_of: each call padded to its longest text). TensorFlow loads only in
`Servable.load`, so flag and port errors come at once.
"""
import asyncio
import base64
import binascii
import contextlib
import json
import os
import signal
import socket
import sys

import fastapi
import uvicorn
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

import config
from tfhub_classifier.serving import batching

MODEL_VERSION = "1"  # one model, served as the version TensorFlow Serving gives a model's first export
SIGNATURE = "serving_default"
INPUT_NAME = "text"  # as the exported SavedModel's serving_default names its input
DRAIN_SECONDS = 5.0  # how long an over-size body is read and dropped, so its client sees the 413
CLIENT_GONE = 499  # nginx's status for a client that closed its connection before the answer
JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
              bool: "true/false", type(None): "null"}


class RequestError(Exception):
    """A request the server refuses: answered as {"error": message} with status."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


def model_name(cfg):
    """The NAME in /v1/models/NAME: --model-name, else the model dir's base name."""
    name = cfg.model_name or os.path.basename(os.path.abspath(cfg.model_dir))
    if not config.MODEL_NAME_PATTERN.fullmatch(name):
        raise ValueError(f"the model dir's name {name!r} can't be part of a URL path; name the model with "
                         "--model-name (letters, digits, '.', '_' and '-')")
    return name


def bind(host, port):
    """A socket bound to host:port, not yet listening: a port in use fails now, before TensorFlow
    loads, and clients are refused (not kept waiting) until the model is ready."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise ValueError(f"can't listen on --host {host} ({error.strerror or error}); use an address of "
                         "this machine, e.g. 127.0.0.1 or 0.0.0.0") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart needn't wait out TIME_WAIT
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise ValueError(f"can't listen on {host}:{port} ({error.strerror or error}); stop what uses the "
                         "port or pass another --port") from None
    return sock


class Servable:
    """The loaded model and what its answers say: texts (str or bytes) -> one JSON result each."""

    def __init__(self, model, record, task, threshold, top_k, batch_size, tensor_names=None):
        self.model, self.record, self.task = model, record, task
        self.threshold, self.top_k, self.batch_size = threshold, top_k, batch_size
        self.tensor_names = tensor_names or {}  # serving_default's input/output -> its graph tensor

    @classmethod
    def load(cls, cfg, log=print):
        from tfhub_classifier.inference import (
            prediction,  # TensorFlow loads here, once the flags and the port are known to be good
        )
        from tfhub_classifier.model import (
            saving,  # TensorFlow loads here, once the flags and the port are known to be good
        )
        model, record, precision = saving.load_model(cfg.model_dir, cfg.precision)
        task = saving.task_of_record(record)
        prediction.check_top_k(task, cfg.top_k)
        servable = cls(model, record, task, cfg.threshold, cfg.top_k, cfg.serve_batch_size,
                       signature_tensor_names(cfg.model_dir))
        servable.score(["A warm-up review, so the first request is not the one that waits."])
        log(f"Loaded {cfg.model_dir} ({task.kind}: {', '.join(task.label_names)}; {precision})")
        return servable

    def score(self, texts):
        """One JSON result per text; a model call per batch_size texts (one call from the Batcher)."""
        from tfhub_classifier.inference import scoring
        logits = scoring.logits_of(self.model, texts, self.batch_size)
        return [self.result(probabilities) for probabilities in self.task.probabilities(logits)]

    def result(self, probabilities):
        """serving_default's outputs for one text, then predict.py's --format jsonl fields."""
        import numpy as np

        from tfhub_classifier.inference import prediction
        result = prediction.labelled(self.task, probabilities, self.threshold, self.top_k)
        result.pop("probabilities", None)  # multi-label's {name: probability}: given as the signature's list
        values = np.atleast_1d(np.asarray(probabilities, dtype=np.float32)).tolist()
        values = [float(f"{value:.7g}") for value in values]  # float32's digits, not float64's noise
        return {**result, "probabilities": values[0] if self.task.kind == "binary" else values,
                "label_names": list(self.task.label_names)}


def signature_tensor_names(model_dir):
    """{input or output name: graph tensor name} of the SavedModel's serving_default, as TensorFlow
    Serving's metadata names them; {} for a model saved without that signature."""
    from tensorflow.core.protobuf import saved_model_pb2
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(model_dir, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    signatures = saved.meta_graphs[0].signature_def if saved.meta_graphs else {}
    if SIGNATURE not in signatures:
        return {}
    signature = signatures[SIGNATURE]
    return {name: info.name for infos in (signature.inputs, signature.outputs) for name, info in infos.items()}


# ---------------------------------------------------------------- requests

async def read_body(request, limit):
    """The request body, refused with 413 past limit bytes: by its Content-Length, or by counting
    what arrives (a chunked body declares none). The rest of an over-size body is read and dropped
    for up to DRAIN_SECONDS, as web servers do, so its client reads the 413 instead of a reset."""
    too_large = RequestError(413, f"the request body is over --max-request-bytes {limit:,}; send fewer or "
                                  "shorter texts per request")
    stream = request.stream()
    declared = request.headers.get("content-length")
    try:
        if declared is not None and int(declared) > limit:
            if request.headers.get("expect", "").lower() != "100-continue":  # else the client waits for a go
                await _drain(stream)
            raise too_large
        chunks, size = [], 0
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                await _drain(stream)
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(CLIENT_GONE, "the client disconnected before the end of the request body") from None
    return b"".join(chunks)


async def _drain(stream):
    async def read_to_the_end():
        async for _ in stream:
            pass
    with contextlib.suppress(asyncio.TimeoutError, ClientDisconnect):
        await asyncio.wait_for(read_to_the_end(), DRAIN_SECONDS)


async def hung_up(request):
    """Returns once the client has closed its connection. The body is read by now, so the server
    (uvicorn) answers receive() only with http.disconnect, when the connection is lost."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestError(400, f"the request body is not valid JSON: {error.msg} at line {error.lineno} "
                                f"column {error.colno}") from None
    except RecursionError:
        raise RequestError(400, "the request body's JSON is nested too deeply") from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits())
        raise RequestError(400, f"the request body's JSON has a number of over {sys.get_int_max_str_digits():,} "
                                "digits; send texts as JSON strings") from None


def texts_of_request(payload, max_text_chars, max_texts):
    """(texts, columnar) of a predict request in TensorFlow Serving's row ("instances": each a text
    or {"text": ...}) or columnar ("inputs": a list of texts or {"text": [...]}) format; a text is
    a string, or {"b64": ...} for its bytes."""
    if not isinstance(payload, dict):
        raise RequestError(400, f'the request must be a JSON object like {{"instances": ["a review"]}}, '
                                f"got {_json_type(payload)}")
    signature = payload.get("signature_name", SIGNATURE)
    if signature not in (SIGNATURE, ""):
        raise RequestError(400, f'Serving signature name: "{signature}" not found in signature def; '
                                f'this model has "{SIGNATURE}" only')
    unknown = sorted(set(payload) - {"signature_name", "instances", "inputs"})
    if unknown:
        raise RequestError(400, f"unknown key(s) {', '.join(map(json.dumps, unknown))} in the request; a "
                                'predict request has "instances" or "inputs", and optionally "signature_name"')
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
    return value


def _json_type(value):
    return JSON_TYPES.get(type(value), type(value).__name__)


def as_columns(results):
    """Row results -> one list per output, as TensorFlow Serving answers a columnar request with
    several named outputs: {"outputs": {name: [value of each text]}}."""
    return {name: [result[name] for result in results] for name in results[0]}


# ---------------------------------------------------------------- the app

def model_status():
    """TensorFlow Serving's GetModelStatusResponse, exactly (strict clients parse it)."""
    return {"model_version_status": [{"version": MODEL_VERSION, "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


def output_specs(task):
    """(dtype, dims) of each prediction output that is a dense tensor, batch first (-1): the saved
    serving_default's two, then predict.py's fields; top_k and multi-label's labels vary in length."""
    labels = len(task.label_names)
    specs = {"probabilities": ("DT_FLOAT", [-1] if task.kind == "binary" else [-1, labels]),
             "label_names": ("DT_STRING", [-1, labels])}
    if task.kind == "binary":
        specs.update(score=("DT_FLOAT", [-1]), label=("DT_STRING", [-1]))
    elif task.kind == "multiclass":
        specs.update(label=("DT_STRING", [-1]), probability=("DT_FLOAT", [-1]))
    return specs


def model_metadata(name, servable):
    """TensorFlow Serving's GetModelMetadataResponse, as its REST API prints it."""
    names = servable.tensor_names
    outputs = {output: _tensor_info(names.get(output, ""), dtype, dims)
               for output, (dtype, dims) in output_specs(servable.task).items()}
    return {"model_spec": {"name": name, "signature_name": "", "version": MODEL_VERSION},
            "metadata": {"signature_def": {"signature_def": {SIGNATURE: {
                "inputs": {INPUT_NAME: _tensor_info(names.get(INPUT_NAME, ""), "DT_STRING", [-1])},
                "outputs": outputs,
                "method_name": "tensorflow/serving/predict"}}}}}


def model_record(name, servable):
    """What TensorFlow Serving has no answer for: the task, the labelling flags, the run record."""
    task = servable.task
    return {"model_spec": {"name": name, "version": MODEL_VERSION},
            "task": {"kind": task.kind, "label_names": list(task.label_names)},
            "threshold": servable.threshold, "top_k": servable.top_k, "run_record": servable.record}


def _tensor_info(name, dtype, dims):
    return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(size), "name": ""} for size in dims],
                                             "unknown_rank": False}, "name": name}


def create_app(servable, name, cfg):
    """The FastAPI app serving servable as NAME; its lifespan runs the Batcher (app.state.batcher).
    app.state.cut_off counts the requests cancelled unanswered (a drain that timed out)."""
    batcher = batching.Batcher(servable.score, cfg.serve_batch_size, cfg.batch_timeout_ms / 1000, cfg.max_queued_texts)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.close()

    app = fastapi.FastAPI(title=f"{name} (TensorFlow Serving REST API)", lifespan=lifespan,
                          docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.cut_off = batcher, 0

    def check_servable(requested, version=None):
        if requested != name or version not in (None, MODEL_VERSION):
            which = f"Latest({requested})" if version is None else f"Specific({requested}, {version})"
            raise RequestError(404, f"Servable not found for request: {which}")

    # Each route also answers under /versions/1, as TensorFlow Serving's do; version is None without it.
    @app.post("/v1/models/{requested}:predict")
    @app.post("/v1/models/{requested}/versions/{version}:predict")
    async def predict(requested: str, request: fastapi.Request, version: str | None = None):
        check_servable(requested, version)
        try:
            payload = parse_json(await read_body(request, cfg.max_request_bytes))
            texts, columnar = texts_of_request(payload, cfg.max_text_chars, cfg.max_texts_per_request)
            results = await batcher.score(texts, lambda: hung_up(request))
        except batching.ClientGone:
            raise RequestError(CLIENT_GONE, "the client disconnected; its texts were not scored") from None
        except asyncio.CancelledError:  # uvicorn cut the request off: the drain timed out
            app.state.cut_off += 1
            raise
        # TensorFlow Serving answers row requests with "predictions" (an object per text, as the model
        # has several named outputs) and columnar ones with "outputs" (a list per output); so do we.
        return JSONResponse({"outputs": as_columns(results)} if columnar else {"predictions": results})

    @app.get("/v1/models/{requested}")
    @app.get("/v1/models/{requested}/versions/{version}")
    async def status(requested: str, version: str | None = None):
        check_servable(requested, version)
        return model_status()

    @app.get("/v1/models/{requested}/metadata")
    @app.get("/v1/models/{requested}/versions/{version}/metadata")
    async def metadata(requested: str, version: str | None = None):
        check_servable(requested, version)
        return model_metadata(name, servable)

    @app.get("/v1/models/{requested}/record")
    @app.get("/v1/models/{requested}/versions/{version}/record")
    async def record(requested: str, version: str | None = None):
        check_servable(requested, version)
        return model_record(name, servable)

    @app.get("/healthz")
    async def health():
        failure = batcher.failure()
        body = {"status": "unavailable" if failure else "ok", "model": name, "model_calls": batcher.calls,
                "texts_scored": batcher.texts, "texts_queued": batcher.queued, "texts_dropped": batcher.dropped}
        return JSONResponse({**body, "error": failure} if failure else body, status_code=503 if failure else 200)

    @app.exception_handler(RequestError)
    async def refused(request, error):
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(batching.Unavailable)
    async def unavailable(request, error):  # a full queue or a dead Batcher: the client may retry
        return JSONResponse({"error": str(error)}, status_code=503)

    @app.exception_handler(HTTPException)
    async def http_error(request, error):  # unknown routes and methods, in TensorFlow Serving's shape
        return JSONResponse({"error": f"{error.detail}: {request.method} {request.url.path}"},
                            status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def failed(request, error):  # e.g. out of memory in a model call; uvicorn logs the traceback
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {batching.first_line(error)}"},
                            status_code=500)

    return app


def uvicorn_server(app, cfg):
    """The uvicorn server that runs app: quiet but for warnings, draining for cfg.drain_timeout_s."""
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                         timeout_graceful_shutdown=cfg.drain_timeout_s))


def serve(app, sock, cfg):
    """Serve app on the bound socket until SIGTERM or SIGINT; then stop taking connections, answer
    the requests in flight and queued (for up to cfg.drain_timeout_s) and return. ValueError if
    the drain timed out and requests were cut off unanswered."""
    server = uvicorn_server(app, cfg)
    # uvicorn re-raises the signal it drained for once it is done; here that means a normal exit.
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in stops}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if app.state.cut_off:
        raise ValueError(f"{app.state.cut_off} request(s) were still running after --drain-timeout-s "
                         f"{cfg.drain_timeout_s:g} and were cut off unanswered; allow a longer drain "
                         "(and as long a grace period in the service manager)")
    return server
