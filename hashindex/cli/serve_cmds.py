"""`hashindex serve`: indexes kept in memory and searched over HTTP (the asgi service, or the basic server);
`hashindex export`: the model as an ONNX file, to encode images where hashindex does not run."""

from __future__ import annotations

import logging

import click

from ..errors import HashindexError
from .group import _echo_json, cli


@cli.command()
@click.argument("index_dir", nargs=-1, required=True)
@click.option("--model", default=None, help="Checkpoint for image queries [default: the checkpoint each index's "
              "shards were extracted with, if still there, else the shipped model of each index].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--server", "server_kind", default="auto", show_default=True, type=click.Choice(["auto", "asgi", "basic"]),
              help="asgi: FastAPI on uvicorn, batched searches (pip install 'hashindex[serve]'); basic: the "
                   "standard library's server, one search at a time; auto: asgi when installed.")
@click.option("--writable", is_flag=True,
              help="Also take POST /items (and /indexes/NAME/items): images added to the index on disk and "
                   "served at once, and DELETE /items?ids=3,17: items taken out (asgi server). Off by default: "
                   "anyone who reaches the port could change the index.")
@click.option("--write-token", envvar="HASHINDEX_WRITE_TOKEN", show_envvar=True, default=None,
              help="With --writable: writes need the header 'Authorization: Bearer TOKEN' (required on a --host "
                   "other than loopback). Prefer the environment variable: a command line is visible to ps.")
@click.option("--read-token", envvar="HASHINDEX_READ_TOKEN", show_envvar=True, default=None,
              help="Every request but /health, /ui and the docs needs 'Authorization: Bearer TOKEN' (this or the "
                   "write token; the /ui page asks for it once). On an open network, with --tls-cert (HTTPS).")
@click.option("--tls-cert", default=None, metavar="PEM", help="Serve HTTPS with this certificate (chain, PEM).")
@click.option("--tls-key", default=None, metavar="PEM", help="Its private key (PEM) [default: in --tls-cert's file].")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Let web pages of this origin (https://photos.example.com; * for any) call the API from a "
                   "browser (CORS; asgi server). Repeat for several.")
@click.option("--access-log", is_flag=True, help="A line per request: client, request line, status (asgi: on "
                                                  "stdout, uvicorn's format; basic: on stderr).")
@click.option("--watch", default=None, type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="Every SECONDS, reload an index that another process changed on disk (build --append, "
                   "remove, sync), as SIGHUP does (asgi server).")
@click.pass_context
def serve(ctx, index_dir, model, host, port, device, server_kind, writable, write_token, read_token, tls_cert,
          tls_key, cors_origins, access_log, watch):
    """Keep indexes and their models in memory and answer searches over HTTP (JSON).

    Each INDEX_DIR is served as /indexes/NAME/... (NAME=DIR to choose the name; a bare DIR is named by its
    folder); the first also answers /search and /batch. API docs at /docs; /health; /metrics (Prometheus).
    SIGTERM or Ctrl-C stops it after the searches in flight; SIGHUP reopens the indexes from disk (after
    build --append, remove or sync) without dropping a request (the asgi server; --watch S: by itself when
    another process changed them, looked at every S seconds).

    \b
    Example:
      hashindex serve index/photos --port 8000 &
      curl -s --data-binary @cat.jpg 'localhost:8000/search?k=10'
      curl -s -F file=@cat.jpg -F file=@dog.jpg 'localhost:8000/batch?k=5'
      curl -s 'localhost:8000/search?id=42&radius=2'
      curl -s -o 42.jpg 'localhost:8000/items/42/image'    # a result's image file
      open http://localhost:8000/ui                          # a page: search with a photo, see results
      hashindex serve index/photos --writable &    # then add photos:
      curl -s -F file=@new1.jpg -F file=@new2.jpg 'localhost:8000/items?label=cat'
      curl -s -X DELETE 'localhost:8000/items?ids=17,42'
      HASHINDEX_WRITE_TOKEN=s3cret hashindex serve index/photos --writable --host 0.0.0.0 &
      curl -s -H 'Authorization: Bearer s3cret' -F file=@new.jpg 'host:8000/items'
      HASHINDEX_READ_TOKEN=r34d hashindex serve index/photos --host 0.0.0.0 &   # searches need a token too
      curl -s -H 'Authorization: Bearer r34d' 'host:8000/search?id=42'
      hashindex serve index/photos --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem   # HTTPS
    """
    from ..service import (asgi_server, bind, check_origins, check_write_access, is_loopback, open_engines,
                           parse_indexes, tls_context)

    indexes = parse_indexes(list(index_dir))
    check_write_access(host, writable, write_token, read_token)
    check_origins(cors_origins)
    tls = tls_context(tls_cert, tls_key)
    scheme = "https" if tls else "http"
    if (read_token or write_token) and not tls and not is_loopback(host):
        logging.getLogger("hashindex").warning(f"--host {host} over plain HTTP: the tokens cross the network in the "
                                               "clear (--tls-cert, or a TLS front end)")
    if server_kind == "auto":
        server_kind = "asgi" if _has_asgi() else "basic"
    elif server_kind == "asgi" and not _has_asgi():
        raise HashindexError("server=asgi: needs the serve extra (pip install 'hashindex[serve]')")
    log = (lambda line: click.echo(line, err=True)) if ctx.obj["progress"] else (lambda line: None)
    if server_kind == "basic":
        if writable:
            raise HashindexError("--writable: the basic server only searches (the asgi server adds items)")
        if len(indexes) > 1:
            raise HashindexError("server=basic: serves one index (the asgi server serves several)")
        if cors_origins:
            raise HashindexError("--cors-origin: the asgi server's (the basic server answers its own pages only)")
        if watch:
            raise HashindexError("--watch: the asgi server's (send the basic server SIGHUP)")
        return _serve_basic(next(iter(indexes.values())), model, host, port, device, read_token, tls, access_log)
    engines = open_engines(indexes, model, device, log)
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    click.echo(f"serving {len(indexes)} index(es) at {scheme}://{bound_host}:{bound_port}/ (docs: /docs); "
               "Ctrl-C or SIGTERM to stop, SIGHUP to reload the indexes", err=True)
    import signal

    # uvicorn stops gracefully on SIGTERM / SIGINT (no new connections, searches in flight finish), then
    # raises the signal again for the handler it found: this no-op one makes that a clean exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    asgi_server(engines, writable=writable, write_token=write_token, read_token=read_token, tls_cert=tls_cert,
                tls_key=tls_key, cors_origins=cors_origins, access_log=access_log, watch=watch).run(sockets=[sock])


@cli.command()
@click.argument("model")
@click.option("--out", required=True, help="ONNX file to write (e.g. model.onnx).")
@click.option("--opset", default=None, type=click.IntRange(18),
              help="ONNX opset [default: the exporter's].")
@click.option("--no-check", is_flag=True, help="Write without running the file in ONNX Runtime first.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def export(model, out, opset, no_check, overwrite, as_json):
    """Write MODEL (a checkpoint or a shipped name) as one ONNX file: its codes without torch or hashindex.

    \b
    The graph takes uint8 (N, C, S, S) pixels (the whole image squashed to the
    model's input size, as extraction prepares it) and outputs codes (packed as
    the index stores them), latent, features, mid_features and logits; the
    model's test views are in it. Before writing, ONNX Runtime runs it on check
    images and its outputs are compared with the model's (float32). Example:
      hashindex export nin-cifar10-48-v4 --out v4.onnx
      hashindex info v4.onnx
    """
    from ..export import INSTALL, export_onnx

    summary = export_onnx(model, out, opset=opset, check=not no_check, overwrite=overwrite)
    if as_json:
        _echo_json(summary)
        return
    check = summary["check"]
    checked = (f"ONNX Runtime matches the model on {check['images']} images (largest difference "
               f"{max(check['max_abs_diff'].values()):.1e})" if check else
               "not run in ONNX Runtime" + ("" if no_check else f" (not installed: {INSTALL})"))
    click.echo(f"wrote {out}: model {summary['model_id']}, {summary['bits']} bits, {summary['bytes']:,} bytes; "
               f"{checked}")


def _has_asgi() -> bool:
    """Whether the serve extra (FastAPI, uvicorn, python-multipart) is installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn", "multipart"))


def _serve_basic(index_dir: str, model, host: str, port: int, device: str, read_token: str | None = None,
                 tls=None, access_log: bool = False) -> None:
    from ..service.basic import Searcher, make_server

    searcher = Searcher(index_dir, model=model, device=device)
    server = make_server(searcher, host, port, log=(lambda line: click.echo(line, err=True)) if access_log else None,
                         read_token=read_token, tls=tls)
    bound_host, bound_port = server.server_address[:2]
    click.echo(f"serving {index_dir} ({searcher.index.count:,} items, {searcher.index.bits} bits) "
               f"at {'https' if tls else 'http'}://{bound_host}:{bound_port}/ (basic server); Ctrl-C to stop",
               err=True)
    import signal

    if hasattr(signal, "SIGHUP"):  # the asgi server's reload signal must not kill this one (its default action)
        signal.signal(signal.SIGHUP, lambda *_: click.echo("SIGHUP: the basic server does not reload its index; "
                                                           "restart it (or serve with --server asgi)", err=True))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
