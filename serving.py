"""A saved classifier behind TensorFlow Serving's REST API, with concurrent requests batched.

    POST /v1/models/NAME[/versions/1]:predict   {"instances": [...]} -> {"predictions": [...]}
                                                {"inputs": [...]}    -> {"outputs": {...}}
    GET  /v1/models/NAME[/versions/1]           model_version_status, plus the run record
    GET  /v1/models/NAME[/versions/1]/metadata  the signature: input "text", the outputs
    GET  /healthz                               200 once the model is loaded and warmed up, with
                                                the model calls made and texts scored so far

Errors are TensorFlow Serving's `{"error": "..."}` with a 4xx status. Texts from concurrent
requests share model calls (`Batcher`), scored one call at a time in a worker thread by the
suite's fast path (scoring.logits_of: each call padded to its longest text). TensorFlow loads
only in `Servable.load`, so flag and port errors come at once.
"""
import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import socket

import fastapi
import uvicorn
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

import config

MODEL_VERSION = "1"  # one model, served as the version TensorFlow Serving gives a model's first export
SIGNATURE = "serving_default"
INPUT_NAME = "text"  # as the exported SavedModel's serving_default names its input
DRAIN_SECONDS = 5.0  # how long an over-size body is read and dropped, so its client sees the 413
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
    """The loaded model and what its answers say: texts -> one JSON result each, as predict.py's
    --format jsonl gives them."""

    def __init__(self, model, record, task, threshold, top_k, batch_size):
        self.model, self.record, self.task = model, record, task
        self.threshold, self.top_k, self.batch_size = threshold, top_k, batch_size

    @classmethod
    def load(cls, cfg, threshold, top_k, log=print):
        import inference  # TensorFlow loads here, once the flags and the port are known to be good
        inference.check_threshold(threshold)
        model, record, precision = inference.load_model(cfg.model_dir, cfg.precision)
        task = inference.task_of_record(record)
        inference.check_top_k(task, top_k)
        servable = cls(model, record, task, threshold, top_k, cfg.serve_batch_size)
        servable.score(["A warm-up review, so the first request is not the one that waits."])
        log(f"Loaded {cfg.model_dir} ({task.kind}: {', '.join(task.label_names)}; {precision})")
        return servable

    def score(self, texts):
        """One JSON result per text; a model call per batch_size texts (one call from the Batcher)."""
        import inference
        import scoring
        logits = scoring.logits_of(self.model, texts, self.batch_size)
        return [inference.json_result(self.task, probabilities, self.threshold, self.top_k)
                for probabilities in self.task.probabilities(logits)]


class Batcher:
    """Gathers texts from concurrent requests into model calls of up to batch_size texts.

    A call starts when batch_size texts wait, or timeout_s after the first of them arrived; texts
    that arrive while the worker thread scores a batch wait for the next call, so under load
    batches fill without waiting. batch_size 1 = one text per call.
    """

    def __init__(self, score, batch_size, timeout_s):
        self.score_batch, self.batch_size, self.timeout_s = score, batch_size, timeout_s
        self.queue = asyncio.Queue()
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")  # one call at a time
        self.task = None
        self.calls = self.texts = 0  # model calls made and texts scored, for /healthz

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def close(self):
        """Stop once every queued text is scored (uvicorn has drained the requests by now)."""
        while not self.queue.empty() and not self.task.done():
            await asyncio.sleep(0.01)
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.worker.shutdown(wait=True)

    async def score(self, texts):
        """The results of texts, in order, scored among other requests' texts."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in texts]
        for text, future in zip(texts, futures):
            self.queue.put_nowait((text, future))
        return await asyncio.gather(*futures)

    async def _next_batch(self):
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.timeout_s
        while len(batch) < self.batch_size:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            try:  # a get() cut short by the timeout leaves its item queued
                batch.append(await asyncio.wait_for(self.queue.get(), max(deadline - loop.time(), 0)))
            except asyncio.TimeoutError:
                break
        return [(text, future) for text, future in batch if not future.done()]  # done = its request gave up

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            self.calls, self.texts = self.calls + 1, self.texts + len(batch)
            try:
                results = await loop.run_in_executor(self.worker, self.score_batch, [text for text, _ in batch])
            except Exception as error:  # the requests concerned get a 500; the server goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)


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
        raise RequestError(400, "the client disconnected before the end of the request body") from None
    return b"".join(chunks)


async def _drain(stream):
    async def read_to_the_end():
        async for _ in stream:
            pass
    with contextlib.suppress(asyncio.TimeoutError, ClientDisconnect):
        await asyncio.wait_for(read_to_the_end(), DRAIN_SECONDS)


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


def texts_of_request(payload, max_text_chars):
    """(texts, columnar) of a predict request in TensorFlow Serving's row ("instances": each a text
    or {"text": ...}) or columnar ("inputs": a list of texts or {"text": [...]}) format."""
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
    if columnar and isinstance(values, dict):
        if set(values) != {INPUT_NAME}:
            raise RequestError(400, f'"inputs" as an object takes the one input "{INPUT_NAME}", got '
                                    f"{', '.join(map(json.dumps, values)) or 'none'}")
        key, values = f"inputs.{INPUT_NAME}", values[INPUT_NAME]
    if not isinstance(values, list):
        raise RequestError(400, f'"{key}" must be a list of texts, got {_json_type(values)}')
    if not values:
        raise RequestError(400, f'"{key}" is empty; send at least one text')
    texts = [_text_of(f"{key}[{i}]", value, rows=not columnar) for i, value in enumerate(values)]
    for i, text in enumerate(texts):
        if len(text) > max_text_chars:
            raise RequestError(400, f"{key}[{i}] has {len(text):,} characters, over --max-text-chars "
                                    f"{max_text_chars:,}; send it shorter")
    return texts, columnar


def _text_of(where, value, rows):
    if rows and isinstance(value, dict):  # TensorFlow Serving's row format with named inputs
        if set(value) != {INPUT_NAME}:
            raise RequestError(400, f'{where} must have the one input "{INPUT_NAME}", got '
                                    f"{', '.join(map(json.dumps, value)) or 'none'}")
        where, value = f"{where}.{INPUT_NAME}", value[INPUT_NAME]
    if not isinstance(value, str):
        raise RequestError(400, f"{where} must be a text (a JSON string)"
                                + (f' or {{"{INPUT_NAME}": "..."}}' if rows else "") + f", got {_json_type(value)}")
    return value


def _json_type(value):
    return JSON_TYPES.get(type(value), type(value).__name__)


def as_columns(results):
    """Row results -> one list per output, as TensorFlow Serving answers a columnar request with
    several named outputs: {"outputs": {name: [value of each text]}}."""
    return {name: [result[name] for result in results] for name in results[0]}


# ---------------------------------------------------------------- the app

def model_status(record):
    """TensorFlow Serving's GetModelStatusResponse, with the run record the model was saved with."""
    return {"model_version_status": [{"version": MODEL_VERSION, "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}],
            "run_record": record}


def model_metadata(name, servable):
    """TensorFlow Serving's GetModelMetadataResponse: the predict signature's input and outputs."""
    outputs = as_columns(_sample_results(servable))
    return {"model_spec": {"name": name, "signature_name": "", "version": MODEL_VERSION},
            "metadata": {"signature_def": {"signature_def": {SIGNATURE: {
                "inputs": {INPUT_NAME: _tensor_info(INPUT_NAME, "DT_STRING", [-1])},
                "outputs": {output: _tensor_info(output, *_spec_of(values[0]))
                            for output, values in outputs.items()},
                "method_name": "tensorflow/serving/predict"}}}},
            "task": {"kind": servable.task.kind, "label_names": list(servable.task.label_names)}}


def _sample_results(servable):
    """One made-up result, to read the outputs' names and types from."""
    import inference
    import numpy as np
    probabilities = np.float64(0.5) if servable.task.kind == "binary" else np.full(servable.task.units, 0.5)
    return [inference.json_result(servable.task, probabilities, servable.threshold, servable.top_k)]


def _spec_of(value):
    if isinstance(value, float):
        return "DT_FLOAT", [-1]
    if isinstance(value, str):
        return "DT_STRING", [-1]
    if isinstance(value, dict):  # a probability per label name
        return "DT_FLOAT", [-1, len(value)]
    return "DT_STRING", [-1, -1]  # labels given, or the top-k objects


def _tensor_info(name, dtype, dims):
    return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(size), "name": ""} for size in dims],
                                             "unknown_rank": False}, "name": name}


def create_app(servable, name, cfg):
    """The FastAPI app serving servable as NAME; its lifespan runs the Batcher."""
    batcher = Batcher(servable.score, cfg.serve_batch_size, cfg.batch_timeout_ms / 1000)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.close()

    app = fastapi.FastAPI(title=f"{name} (TensorFlow Serving REST API)", lifespan=lifespan,
                          docs_url=None, redoc_url=None, openapi_url=None)

    def check_servable(requested, version=None):
        if requested != name or version not in (None, MODEL_VERSION):
            which = f"Latest({requested})" if version is None else f"Specific({requested}, {version})"
            raise RequestError(404, f"Servable not found for request: {which}")

    async def predict(request, requested, version=None):
        check_servable(requested, version)
        payload = parse_json(await read_body(request, cfg.max_request_bytes))
        texts, columnar = texts_of_request(payload, cfg.max_text_chars)
        results = await batcher.score(texts)
        # TensorFlow Serving answers row requests with "predictions" (an object per text, as the model
        # has several named outputs) and columnar ones with "outputs" (a list per output); so do we.
        return JSONResponse({"outputs": as_columns(results)} if columnar else {"predictions": results})

    @app.post("/v1/models/{requested}:predict")
    async def predict_latest(requested: str, request: fastapi.Request):
        return await predict(request, requested)

    @app.post("/v1/models/{requested}/versions/{version}:predict")
    async def predict_version(requested: str, version: str, request: fastapi.Request):
        return await predict(request, requested, version)

    @app.get("/v1/models/{requested}")
    async def status_latest(requested: str):
        check_servable(requested)
        return model_status(servable.record)

    @app.get("/v1/models/{requested}/versions/{version}")
    async def status_version(requested: str, version: str):
        check_servable(requested, version)
        return model_status(servable.record)

    @app.get("/v1/models/{requested}/metadata")
    async def metadata_latest(requested: str):
        check_servable(requested)
        return model_metadata(name, servable)

    @app.get("/v1/models/{requested}/versions/{version}/metadata")
    async def metadata_version(requested: str, version: str):
        check_servable(requested, version)
        return model_metadata(name, servable)

    @app.get("/healthz")
    async def health():
        return {"status": "ok", "model": name, "model_calls": batcher.calls, "texts_scored": batcher.texts}

    @app.exception_handler(RequestError)
    async def refused(request, error):
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, error):  # unknown routes and methods, in TensorFlow Serving's shape
        return JSONResponse({"error": f"{error.detail}: {request.method} {request.url.path}"},
                            status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def failed(request, error):  # e.g. out of memory in a model call; uvicorn logs the traceback
        first_line = (str(error).strip().splitlines() or [""])[0]
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {first_line}"}, status_code=500)

    return app


def serve(app, sock, cfg):
    """Serve app on the bound socket until SIGTERM or SIGINT; then stop taking connections, answer
    the requests in flight (for up to cfg.drain_timeout_s) and return."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=cfg.drain_timeout_s))
    # uvicorn re-raises the signal it drained for once it is done; here that means a normal exit.
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in stops}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return server
