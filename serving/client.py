"""Clients for the TF Serving-style REST and gRPC servers.

    from serving.client import RestClient, GrpcClient
    client = RestClient("http://127.0.0.1:8501", model_name="switch")
    client.predict({"token_ids": [[2, 10, 11]]})  # {"logits": ..., "next_token": ...}
    client.generate(["ROMEO:"], max_new_tokens=8, temperature=0.0)  # [str]
    client.generate_outputs(["ROMEO:"], 8, temperature=0.8, top_k=40, seed=1)
    # {"text": ..., "token_ids": ..., "expert": ...}
    client.route([[2, 10, 11]])  # {"expert": ..., "probability": ...}
    client.classify([{"text": "a fine day"}])  # {"classes": ..., "scores": ...}
    GrpcClient("127.0.0.1:8500", model_name="switch").predict(...)  # the same

Both clients read the signatures once (`metadata()`) and cast inputs to the
signature's dtypes where that loses nothing (ints to int32, numbers to
float32); anything else goes as given, and the server rejects it. Outputs are
numpy arrays; strings come back as bytes (`dtype=object`) from both clients.
A server error raises `ServingClientError(status, message)`: `status` is the
HTTP status (REST) or the gRPC status code name (gRPC).

`RestClient` is in `serving/rest_client.py`, `GrpcClient` in
`serving/grpc_client.py`, what they share in `serving/client_base.py`; this
module is the command line:
`python -m serving.client [--rest URL | --grpc TARGET] --model switch
{predict --token-ids 2,10,11 | generate --prompt "ROMEO:" [--max-new-tokens N]
[--temperature T] [--top-k K] [--top-p P] [--seed S] | route --token-ids ... |
classify --example '{"text": "..."}' [--example ...] [--context JSON]
[--signature classify]}` prints JSON (`generate`: its text, new token ids and
experts; `classify`: classes and scores).
"""

import argparse
import json
import sys

from .client_base import ServingClientError
from .grpc_client import GrpcClient
from .rest_client import RestClient, json_value

__all__ = ["GrpcClient", "RestClient", "ServingClientError", "main"]


def _ids(text):
    try:
        return [[int(item) for item in text.split(",") if item.strip()]]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--token-ids wants comma-separated integers, got {text!r}"
        ) from None


def _json_object(text):
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _jsonable(outputs):
    return {name: json_value(value) for name, value in sorted(outputs.items())}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m serving.client")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rest", metavar="URL", help="default http://127.0.0.1:8501")
    where.add_argument("--grpc", metavar="TARGET", help="e.g. 127.0.0.1:8500")
    parser.add_argument("--model", default="switch")
    parser.add_argument("--timeout", type=float, default=10)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("predict", "route"):
        command = commands.add_parser(name)
        command.add_argument("--token-ids", type=_ids, required=True)
    command = commands.add_parser("generate")
    command.add_argument("--prompt", action="append", required=True)
    command.add_argument("--max-new-tokens", type=int, default=32)
    command.add_argument("--temperature", type=float, default=0.8)
    command.add_argument("--top-k", type=int, default=0, help="0: off")
    command.add_argument("--top-p", type=float, default=1.0, help="1.0: off")
    command.add_argument("--seed", type=int, default=0)
    command = commands.add_parser("classify")
    command.add_argument(
        "--example", type=_json_object, action="append", required=True,
        help='one tf.Example as JSON, e.g. \'{"text": "a fine day"}\'',
    )  # fmt: skip
    command.add_argument("--context", type=_json_object)
    command.add_argument("--signature", default="classify")
    args = parser.parse_args(argv)

    if args.grpc:
        client = GrpcClient(args.grpc, model_name=args.model, timeout=args.timeout)
    else:
        url = args.rest or "http://127.0.0.1:8501"
        client = RestClient(url, model_name=args.model, timeout=args.timeout)
    try:
        if args.command == "predict":
            result = _jsonable(client.predict({"token_ids": args.token_ids}))
        elif args.command == "route":
            result = _jsonable(client.route(args.token_ids))
        elif args.command == "classify":
            result = _jsonable(
                client.classify(args.example, args.context, args.signature)
            )
        else:
            outputs = client.generate_outputs(
                args.prompt,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                seed=args.seed,
            )
            result = _jsonable(outputs)
    except ServingClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # Connection refused, timeouts.
        print(f"error: cannot reach the server: {error}", file=sys.stderr)
        return 2
    finally:
        if isinstance(client, GrpcClient):
            client.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
