"""``python -m flexavatar bench head``: ms for ICT ``vertices`` and the UV position map."""

from __future__ import annotations

import argparse

import torch

from flexavatar.eval.bench import median_ms
from flexavatar.head import NUM_EXPRESSIONS, ICTHead, UVAtlas


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flexavatar bench head")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    head = ICTHead.load()
    gen = torch.Generator().manual_seed(0)
    print(f"threads={torch.get_num_threads()}  vertices={head.num_vertices}  identity modes={head.num_identity}")
    with torch.no_grad():
        for batch in (1, 64):
            identity = torch.randn(batch, head.num_identity, generator=gen)
            expression = torch.rand(batch, NUM_EXPRESSIONS, generator=gen)
            ms = median_ms(lambda i=identity, e=expression: head.vertices(i, e), args.repeats)
            print(f"vertices            B={batch:<3d}  {ms:8.2f} ms")
        verts = head.vertices(torch.randn(1, head.num_identity, generator=gen), torch.rand(1, NUM_EXPRESSIONS, generator=gen))
        for resolution in (128, 256):
            atlas = UVAtlas.for_head(head, resolution)
            ms = median_ms(lambda a=atlas: a.position_map(verts), args.repeats)
            print(f"uv position map     R={resolution:<3d}  {ms:8.2f} ms   ({atlas.num_texels} texels)")
