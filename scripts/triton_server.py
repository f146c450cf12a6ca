"""
Triton Inference Server (PyTriton) hosting the grounding passes of one exported model bundle.

Runs in the server environment (.venv-serve: Debian's python3.11, nvidia-pytriton,
onnxruntime, numpy; no torch, no ROS). `serve` (clip_ros.tools.serve) writes the bundle and
starts this file; run it directly only with a bundle that `serve --export-only` wrote.

Models (each a Python model running the exported ONNX graphs under ONNX Runtime):

- clipseg: pixels [B, 3, S, S] float32 + conditionals [B, N, D] float32 -> logits [B, N, s, s].
  The vision pass runs once over every image the dynamic batcher gathered (all clients);
  the light decoder runs per image with that image's N conditionals.
- clip_image: crop pixels [B, 3, s, s] float32 -> features [B, D] (batched across clients).
- clip_text, clipseg_text: tokens [N, L] int64 -> features [N, D].
- shape (a model with a shape head): crop centre pixels [B, 3, s, s] float32 -> logits [B, C].
- clip_ros_info: the bundle's model description (names, sizes, normalisation, vocabulary,
  synonyms, abstention rule) as JSON, so robots hold no weights and no model files.

Triton itself refuses a wrong dtype, a wrong shape or a batch over max_batch_size with a
reason before the model sees it; the models check what Triton cannot (N, L) and answer an
error naming the problem. None of these stops the server.
"""
import argparse
import json
import logging
import os
from pathlib import Path
import sys

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

LOG = logging.getLogger('clip_ros.serve')


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # Five graphs share the cores with each other (and, on a small box, with clients): threads
    # that spin while idle would take the CPU from the next request.
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


class Bundle:
    """The bundle's graphs opened under ONNX Runtime, and its description."""

    def __init__(self, directory: Path, threads: int = 0):
        self.info = json.loads((directory / 'bundle.json').read_text(encoding='utf-8'))
        self.sessions = {name: _session(directory / f'{name}.onnx', threads)
                         for name in ('clipseg_visual', 'clipseg_decoder', 'clipseg_text',
                                      'clip_image', 'clip_text')}
        if self.info.get('shape'):
            self.sessions['shape'] = _session(directory / 'shape.onnx', threads)
        self.decoder_inputs = [i.name for i in self.sessions['clipseg_decoder'].get_inputs()]

    def clipseg(self, requests: list) -> list:
        """Answer clipseg requests: one vision pass over all their images, decoders per image."""
        dim = self.info['clipseg']['cond_dim']
        for request in requests:
            pixels, cond = request['pixels'], request['conditionals']
            if cond.shape[0] != pixels.shape[0]:
                raise ValueError(f'conditionals have {cond.shape[0]} rows for '
                                 f'{pixels.shape[0]} images')
            if cond.shape[1] < 1 or cond.shape[2] != dim:
                raise ValueError(f'conditionals must be [B, N >= 1, {dim}], got '
                                 f'{list(cond.shape)}')
        pixels = np.concatenate([r['pixels'] for r in requests])
        hidden = self.sessions['clipseg_visual'].run(None, {'pixels': pixels})
        responses, row = [], 0
        for request in requests:
            logits = []
            for cond in request['conditionals']:
                feed = dict(zip(self.decoder_inputs, [h[row:row + 1] for h in hidden] + [cond]))
                logits.append(self.sessions['clipseg_decoder'].run(None, feed)[0])
                row += 1
            responses.append({'logits': np.stack(logits).astype(np.float32, copy=False)})
        return responses

    def tower(self, graph: str, name: str, array: np.ndarray) -> dict:
        """Run one tower graph (image or text) on its batched input."""
        return {'features': self.sessions[graph].run(None, {name: array})[0]}


def _text_infer(bundle: Bundle, graph: str):
    length = bundle.info['context_length']

    @batch
    def infer(tokens):
        if tokens.shape[1] != length:
            raise ValueError(f'tokens must be [N, {length}], got {list(tokens.shape)}')
        return bundle.tower(graph, 'tokens', tokens)
    return infer


def _info_infer(bundle: Bundle):
    text = json.dumps(bundle.info).encode()

    def infer(requests: list) -> list:
        return [{'info': np.array([text], dtype=np.bytes_)} for _ in requests]
    return infer


def bind(triton: Triton, bundle: Bundle, max_batch: int, max_crops: int,
         delay_us: int) -> None:
    """Bind the bundle's models (five, six with a shape head) to a Triton instance."""
    info = bundle.info
    size, crop = info['clipseg']['image_size'], info['clip']['image_size']
    batcher = DynamicBatcher(max_queue_delay_microseconds=delay_us)
    triton.bind(
        model_name='clipseg', infer_func=bundle.clipseg,
        inputs=[Tensor(name='pixels', dtype=np.float32, shape=(3, size, size)),
                Tensor(name='conditionals', dtype=np.float32, shape=(-1, -1))],
        outputs=[Tensor(name='logits', dtype=np.float32, shape=(-1, -1, -1))],
        config=ModelConfig(max_batch_size=max_batch, batcher=batcher), strict=True)

    @batch
    def clip_image(pixels):
        return bundle.tower('clip_image', 'pixels', pixels)
    triton.bind(
        model_name='clip_image', infer_func=clip_image,
        inputs=[Tensor(name='pixels', dtype=np.float32, shape=(3, crop, crop))],
        outputs=[Tensor(name='features', dtype=np.float32, shape=(-1,))],
        config=ModelConfig(max_batch_size=max_crops, batcher=batcher), strict=True)
    if 'shape' in bundle.sessions:
        @batch
        def shape(pixels):
            return {'logits': bundle.sessions['shape'].run(None, {'pixels': pixels})[0]}
        side = info['shape']['input']
        triton.bind(
            model_name='shape', infer_func=shape,
            inputs=[Tensor(name='pixels', dtype=np.float32, shape=(3, side, side))],
            outputs=[Tensor(name='logits', dtype=np.float32, shape=(-1,))],
            config=ModelConfig(max_batch_size=max_crops, batcher=batcher), strict=True)
    for graph in ('clip_text', 'clipseg_text'):
        triton.bind(
            model_name=graph, infer_func=_text_infer(bundle, graph),
            inputs=[Tensor(name='tokens', dtype=np.int64, shape=(-1,))],
            outputs=[Tensor(name='features', dtype=np.float32, shape=(-1,))],
            config=ModelConfig(max_batch_size=max_crops, batcher=batcher), strict=True)
    triton.bind(
        model_name='clip_ros_info', infer_func=_info_infer(bundle),
        inputs=[Tensor(name='request', dtype=np.bytes_, shape=(1,))],
        outputs=[Tensor(name='info', dtype=np.bytes_, shape=(1,))],
        config=ModelConfig(batching=False), strict=True)


def build_parser() -> argparse.ArgumentParser:
    """Return the command line parser (serve passes these through)."""
    parser = argparse.ArgumentParser(prog='triton_server', description=__doc__.split('\n')[1])
    parser.add_argument('bundle', type=Path, help='directory serve --export-only wrote')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address the gRPC and HTTP endpoints listen on (default localhost)')
    parser.add_argument('--grpc-port', type=int, default=8001)
    parser.add_argument('--http-port', type=int, default=8000)
    parser.add_argument('--metrics-port', type=int, default=8002)
    parser.add_argument('--max-batch', type=int, default=8, help='most frames in one batch')
    parser.add_argument('--max-crops', type=int, default=64,
                        help='most crops (or phrases) in one batch')
    parser.add_argument('--delay-us', type=int, default=2000,
                        help='how long the dynamic batcher waits for other clients')
    parser.add_argument('--threads', type=int, default=0,
                        help='ONNX Runtime threads per graph (0: its default)')
    parser.add_argument('--ssl-cert', help='PEM server certificate: gRPC over TLS')
    parser.add_argument('--ssl-key', help='PEM server key (with --ssl-cert)')
    parser.add_argument('--ssl-root', help='PEM CA of client certificates: mutual TLS')
    parser.add_argument('--verbose', action='store_true', help="Triton's verbose log")
    return parser


def triton_config(args) -> TritonConfig:
    """Return the TritonConfig for the parsed arguments (ports, address, TLS)."""
    ssl = {}
    if (args.ssl_key or args.ssl_root) and not args.ssl_cert:
        raise SystemExit('triton_server: --ssl-key and --ssl-root need --ssl-cert (TLS was '
                         'asked for: no plain server)')
    if args.ssl_cert:
        if not args.ssl_key:
            raise SystemExit('triton_server: --ssl-cert needs --ssl-key')
        ssl = {'grpc_use_ssl': True, 'grpc_server_cert': args.ssl_cert,
               'grpc_server_key': args.ssl_key}
        if args.ssl_root:
            ssl.update(grpc_use_ssl_mutual=True, grpc_root_cert=args.ssl_root)
    # PyTriton talks to its own server over HTTP, so HTTP stays open; with TLS it listens on
    # localhost only and robots reach nothing but the encrypted gRPC endpoint.
    local = '127.0.0.1' if ssl else args.host
    return TritonConfig(
        grpc_address=args.host, grpc_port=args.grpc_port, http_address=local,
        http_port=args.http_port, metrics_address=local, metrics_port=args.metrics_port,
        log_verbose=1 if args.verbose else 0, exit_on_error=True, **ssl)


def main(argv=None) -> int:
    """Serve the bundle until interrupted."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='[serve] %(message)s')
    logging.getLogger('pytriton').setLevel(logging.WARNING)
    bundle = Bundle(args.bundle, args.threads)
    bundle.info['max_crops'] = args.max_crops  # clients split larger crop or phrase batches
    with Triton(config=triton_config(args)) as triton:
        bind(triton, bundle, args.max_batch, args.max_crops, args.delay_us)
        LOG.info(f"serving {bundle.info['clip']['name']} + {bundle.info['clipseg']['name']} "
                 f'on {args.host}:{args.grpc_port} (gRPC), pid {os.getpid()}')
        sys.stdout.flush()
        triton.serve()
    return 0


if __name__ == '__main__':
    sys.exit(main())
