"""``rerankq map IN.jsonl --plot map.png``: embed a file of items through the queue, lay them out in 2-D, draw
and export the map.

Items are embedded as embedding jobs (``"task": "embed"``; ``rerankq.client.embedmap.build``). An item that
cannot be embedded (an unreadable reference) is left off the map and named on stderr with its line; the
command still draws the rest (exit 0). Exit codes as for jobs (``rerankq.cli``): 1 when no item could be
embedded or a job failed, 2 for a bad line (named with its field) or option, 3 timed out, 4 Redis unreachable
or an extra missing.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rerankq.errors import InvalidRequest


def run_map(args: argparse.Namespace) -> int:
    from rerankq.client.client import RerankClient
    from rerankq.client.embedmap.build import compose, embed
    from rerankq.client.embedmap.items import read_items
    from rerankq.client.embedmap.plot import plot_map, write_csv

    if not args.plot and not args.csv:
        raise InvalidRequest("nothing to write: give --plot PNG, --csv CSV or both", "--plot")
    if args.neighbours < 1:
        raise InvalidRequest(f"{args.neighbours} is below 1", "--neighbours")
    import sklearn  # noqa: F401  (before any job: a missing extra stops here, named by rerankq.cli)

    items = read_items(args.input)
    fields = {"model": args.model, "dimensions": args.dimensions}
    with RerankClient() as client:
        done = embed(client, [i.side for i in items], args.timeout, instruction=args.instruction, **fields)
        query = None
        if args.query:
            found = embed(client, [{"text": args.query}], args.timeout, instruction=args.query_instruction,
                          **fields)
            query = found.vectors[0]
            if query is None:
                raise InvalidRequest(f"the query could not be embedded: {found.errors.get(0)}", "--query")
    for index, error in sorted(done.errors.items()):
        print(f"line {items[index].line}: left off the map: {error}", file=sys.stderr)
    if len(done.errors) == len(items):
        print(f"no item could be embedded ({len(items)} failed)", file=sys.stderr)
        return 1
    picture, rows = compose(items, done, args, query)
    written = [str(plot_map(picture, args.plot))] if args.plot else []
    written += [str(write_csv(args.csv, rows))] if args.csv else []
    print(f"{picture.title}; {len(done.errors)} left off; wrote {', '.join(written)}")
    return 0


def add_commands(sub: Any) -> None:
    """Register ``map`` on ``rerankq``'s subparsers."""
    p = sub.add_parser("map", help="embed a JSONL file of items, lay them out in 2-D (t-SNE or PCA), write a PNG "
                       "and / or CSV")
    p.add_argument("input", help="JSONL, one item a line: a text, or {text?, image?, video?, label?} (- = stdin)")
    p.add_argument("--plot", metavar="PNG", help="write the map as a PNG")
    p.add_argument("--csv", metavar="CSV", help="write index, line, label, modality, x, y, ref, neighbour_rank, "
                   "similarity, error per item")
    p.add_argument("--method", choices=("tsne", "pca"), default="tsne", help="the layout (default: tsne)")
    p.add_argument("--label-by", choices=("label", "modality"), default=None,
                   help="what colours the points (default: label when any line has one, else modality)")
    p.add_argument("--model", default=None, help="the embedding model's SPEC (default: the deployment's)")
    p.add_argument("--instruction", default=None, help="the items' instruction (default: the model's own)")
    p.add_argument("--dimensions", type=int, default=None, help="Matryoshka: embed with the first N dimensions")
    p.add_argument("--query", metavar="TEXT", default=None, help="a text whose nearest items are highlighted")
    p.add_argument("--query-instruction", default=None, help="the query's instruction (default: the model's own)")
    p.add_argument("--neighbours", type=int, default=5, metavar="K", help="how many to highlight (default: 5)")
    p.add_argument("--perplexity", type=float, default=None, help="t-SNE's (default: 30, lowered for small sets)")
    p.add_argument("--seed", type=int, default=0, help="the layout's random seed (default: 0)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for each job (default: forever)")
    p.set_defaults(func=run_map)
