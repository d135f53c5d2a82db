"""Serve a saved classifier over HTTP with TensorFlow Serving's REST API, batching concurrent requests.

    python serve.py --model-dir models/imdb_bert --port 8501
    curl -H 'Content-Type: application/json' -d '{"instances": ["The movie was great!"]}' \
         http://127.0.0.1:8501/v1/models/imdb_bert:predict
    python serve.py --max-batch-size 1     # no batching: one text per model call

SIGTERM or Ctrl-C stops it: no new connections, the requests in flight and queued are answered, then it
exits 0; if --drain-timeout-s passes first, the requests left are cut off and it exits 2, saying so.
The request and answer shapes, routes and limits: tfhub_classifier/serving/rest_api.py's docstring;
the connections' deadlines and cap: serving/connections.py's.
"""
import argparse
import sys

import config
from tfhub_classifier import cli

MEMORY_FLAGS = "--max-batch-size"  # named by cli.run when memory runs out; the model fixes the sequence length


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_flags(parser, config.SERVE)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    cfg = config.from_args(args, script=config.SERVE)
    cli.require_model_dir(cfg.model_dir)
    # FastAPI and uvicorn; TensorFlow waits for Servable.load
    from tfhub_classifier.serving import connections, rest_api
    from tfhub_classifier.serving.servable import Servable
    name = rest_api.model_name(cfg)
    connections.check_descriptor_limit(cfg.max_connections)
    sock = connections.bind(cfg.host, cfg.port)
    try:
        servable = Servable.load(cfg, log=_log)
        _log(f"Serving {name} at http://{cfg.host}:{cfg.port}/v1/models/{name}:predict; up to "
             f"{cfg.serve_batch_size} texts per model call, gathered for at most {cfg.batch_timeout_ms:g} ms")
        connections.serve(rest_api.create_app(servable, name, cfg), sock, cfg)
    finally:
        sock.close()
    _log(f"Stopped serving {name}.")
    return name


def _log(line):
    print(line, file=sys.stderr, flush=True)  # stdout stays free; a service manager logs stderr


if __name__ == "__main__":
    cli.exit_with(main)
