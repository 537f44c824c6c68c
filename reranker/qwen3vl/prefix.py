"""Exact shared-prefix forward passes on the Qwen3-VL backbone: a job's common prefix (system prompt,
instruction, query — its images and videos included) runs once; every document then runs as a *suffix*
against the prefix's keys and values. Scores equal one-pair-per-pass scores (fp32: ≤ 1e-5 in logit).
Where the prefix ends is ``rerankq.models.qwen3vl.sharing``'s business; this module runs the passes.

What makes it exact, each point a trap measured on transformers 5.23:

- **Positions**: M-RoPE positions are passed explicitly: the suffix's own rope index, offset by the
  prefix's next position. Never the model's derivation with a cache, never its stored ``rope_deltas``
  (module state, shared by every caller).
- **Deepstack**: visual features are added at the visual positions of the *current* input only: the
  prefix's images in the prefix pass, the suffix's in the suffix pass.
- **Keys and values**: the prefix's are held read-only, one copy (``PrefixKV``). A suffix pass puts each
  row's prefix in front of its own keys and values one layer at a time and stores nothing back (no
  ``DynamicCache``, no per-row copy kept across layers).
- **Mask**: sdpa / eager get a 4D mask over [prefix, left-padded suffix] per row (a prefix shorter than the
  widest is masked on its left; the suffix is causal; a pad row sees only itself, so nothing is NaN).
  flash-attention 2 takes no 4D mask: rows are packed with no padding and run through its varlen form
  (``cu_seqlens``; causal alignment is bottom-right from flash-attn 2.1, which is what a suffix needs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.masking_utils import create_causal_mask

from rerankq.models.qwen3vl.tokens import IMAGE_PAD_ID, VIDEO_PAD_ID
from rerankq.models.qwen3vl.vision import VisionInput, normalize

PAD_ID = 151643


@dataclass(eq=False)
class PrefixKV:
    """A computed prefix: each layer's keys and values, ``(1, kv_heads, length, head_dim)``, read-only, and
    the M-RoPE position its suffixes start at."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int
    next_position: int

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


EMPTY = PrefixKV([], [], 0, 0)  # a whole pair is a suffix of nothing


class _Capture:
    """Stands in for a cache during a prefix pass: keeps each layer's keys and values, changes nothing."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys.append(key_states)
        self.values.append(value_states)
        return key_states, value_states


class _Prepend:
    """Stands in for a cache during a suffix pass: each row's prefix keys and values go in front of the
    row's own, for this layer only; nothing is stored.

    Padded layout (sdpa, eager): ``(B, h, width + S, d)``, a shorter prefix right-aligned against the
    suffix. Packed layout (flash-attention varlen): ``(1, h, Σ (P_row + S_row), d)``, row after row.
    """

    def __init__(self, prefixes: list[PrefixKV], row_prefix: list[int], width: int,
                 packed_spans: list[tuple[int, int]] | None) -> None:
        self.prefixes, self.row_prefix, self.width, self.packed_spans = prefixes, row_prefix, width, packed_spans
        rows = torch.tensor(row_prefix)
        self.rows_of = [torch.nonzero(rows == j).flatten() for j in range(len(prefixes))]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys = [p.keys[layer_idx] if p.length else None for p in self.prefixes]
        values = [p.values[layer_idx] if p.length else None for p in self.prefixes]
        return self._join(key_states, keys), self._join(value_states, values)

    def _join(self, suffix: torch.Tensor, parts: list[torch.Tensor | None]) -> torch.Tensor:
        if self.packed_spans is not None:
            pieces = []
            for row, (start, end) in enumerate(self.packed_spans):
                part = parts[self.row_prefix[row]]
                pieces += [suffix[0, :, start:end]] if part is None else [part[0], suffix[0, :, start:end]]
            return torch.cat(pieces, dim=1).unsqueeze(0)
        batch, heads, length, dim = suffix.shape
        out = suffix.new_zeros(batch, heads, self.width + length, dim)
        out[:, :, self.width:] = suffix
        for part, rows in zip(parts, self.rows_of, strict=True):
            if part is not None:
                out[rows.to(out.device), :, self.width - part.shape[2]:self.width] = part
        return out


def _embed(backbone: Any, ids: torch.Tensor, vision: Sequence[VisionInput]
           ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor] | None]:
    """Token embeddings with the vision tower's features in place, the visual positions and the deepstack
    features for them (as ``Qwen3VLModel.forward`` builds them)."""
    embeds = backbone.get_input_embeddings()(ids)
    if not vision:
        return embeds, None, None
    visual = (ids == IMAGE_PAD_ID) | (ids == VIDEO_PAD_ID)
    deepstack: list[torch.Tensor] | None = None
    for kind, pad in (("image", IMAGE_PAD_ID), ("video", VIDEO_PAD_ID)):
        items = [v for v in vision if v.kind == kind]
        if not items:
            continue
        pixels = normalize(torch.cat([v.pixel_values for v in items]).to(ids.device)).to(embeds.dtype)
        grid = torch.tensor([v.grid_thw for v in items], dtype=torch.long, device=ids.device)
        features = backbone.get_image_features if kind == "image" else backbone.get_video_features
        out = features(pixels, grid, return_dict=True)
        mask = ids == pad
        embeds = embeds.masked_scatter(mask.unsqueeze(-1), torch.cat(out.pooler_output).to(embeds.dtype))
        if deepstack is None:
            deepstack = [embeds.new_zeros(int(visual.sum()), embeds.shape[-1]) for _ in out.deepstack_features]
        for joint, feature in zip(deepstack, out.deepstack_features, strict=True):
            joint[mask[visual]] = torch.cat(feature).to(embeds.dtype)
    return embeds, visual, deepstack


def _rope_positions(backbone: Any, ids: torch.Tensor, mask: torch.Tensor, vision: Sequence[VisionInput]
                    ) -> torch.Tensor:
    """(3, B, L) M-RoPE positions of each row on its own, from 0 (pads get 0). Reads no model state."""
    types = (ids == IMAGE_PAD_ID).int() + 2 * (ids == VIDEO_PAD_ID).int()
    grids = {kind: [v.grid_thw for v in vision if v.kind == kind] for kind in ("image", "video")}
    image_grid = torch.tensor(grids["image"], dtype=torch.long) if grids["image"] else None
    video_grid = torch.tensor(grids["video"], dtype=torch.long) if grids["video"] else None
    positions, _ = backbone.get_rope_index(ids, types, image_grid, video_grid, attention_mask=mask)
    return positions


def _run_layers(lm: Any, hidden: torch.Tensor, positions: torch.Tensor, mask: Any, cache: Any,
                visual: torch.Tensor | None, deepstack: list[torch.Tensor] | None, **kwargs: Any) -> torch.Tensor:
    """The text model's decoder loop, with our positions, mask and cache stand-in."""
    position_embeddings = lm.rotary_emb(hidden, positions)
    for index, layer in enumerate(lm.layers):
        hidden = layer(hidden, attention_mask=mask, position_ids=None, past_key_values=cache,
                       position_embeddings=position_embeddings, **kwargs)
        if deepstack is not None and visual is not None and index < len(deepstack):
            hidden = hidden.clone()  # as transformers' _deepstack_process
            hidden[visual, :] = hidden[visual, :] + deepstack[index]
    return hidden


def _left_padded(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of ``rows`` left-padded to the longest."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, longest - len(row):] = torch.tensor(list(row), dtype=torch.long)
        mask[b, longest - len(row):] = 1
    return ids, mask


@torch.inference_mode()
def encode_prefixes(backbone: Any, prefixes: Sequence[tuple[Sequence[int], Sequence[VisionInput]]]
                    ) -> list[PrefixKV]:
    """Run prefixes (token ids, vision inputs) in one left-padded pass, vision tower included, and keep
    each one's keys and values (its own copy, so each is freed on its own)."""
    lm, device = backbone.language_model, backbone.device
    ids, mask = _left_padded([p[0] for p in prefixes])
    vision = [v for _, items in prefixes for v in items]
    positions = _rope_positions(backbone, ids, mask, vision).to(device)
    ids, mask = ids.to(device), mask.to(device)
    embeds, visual, deepstack = _embed(backbone, ids, vision)
    attn = create_causal_mask(config=lm.config, inputs_embeds=embeds, attention_mask=mask, past_key_values=None)
    capture = _Capture()
    _run_layers(lm, embeds, positions, attn, capture, visual, deepstack)
    out = []
    for b, (tokens, _) in enumerate(prefixes):
        keep = slice(ids.shape[1] - len(tokens), None)
        out.append(PrefixKV([k[b:b + 1, :, keep].clone() for k in capture.keys],
                            [v[b:b + 1, :, keep].clone() for v in capture.values],
                            len(tokens), int(positions[:, b, keep].max()) + 1))
    return out


def encode_prefix(backbone: Any, ids: Sequence[int], vision: Sequence[VisionInput]) -> PrefixKV:
    """One prefix on its own (see ``encode_prefixes``)."""
    return encode_prefixes(backbone, [(ids, vision)])[0]


@dataclass
class SuffixRow:
    """One row of a suffix pass: the computed prefix it continues, its own token ids and vision inputs."""

    prefix: PrefixKV
    ids: list[int]
    vision: list[VisionInput]


def _suffix_mask(prefix_lengths: torch.Tensor, width: int, mask: torch.Tensor, dtype: torch.dtype,
                 boolean: bool) -> torch.Tensor:
    """(B, 1, S, width + S): row b sees its own prefix (the last ``prefix_lengths[b]`` of ``width``) and its
    suffix causally; a pad row sees only itself (no row is empty, so nothing is NaN)."""
    batch, length = mask.shape
    device = mask.device
    prefix_ok = torch.arange(width, device=device)[None, :] >= (width - prefix_lengths.to(device))[:, None]
    steps = torch.arange(length, device=device)
    causal = steps[:, None] >= steps[None, :]
    suffix_ok = (causal[None] & mask.bool()[:, None, :]) | torch.eye(length, dtype=torch.bool, device=device)
    allowed = torch.cat([prefix_ok[:, None, :].expand(batch, length, width), suffix_ok], dim=-1)[:, None]
    if boolean:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)


def uses_varlen(backbone: Any) -> bool:
    """Whether suffix passes run packed through flash-attention's varlen form (no 4D mask there)."""
    return str(backbone.config._attn_implementation) == "flash_attention_2"


def can_share(backbone: Any) -> bool:
    """Whether this backbone's attention can run suffix passes exactly: sdpa and eager with a 4D mask;
    flash-attention 2 from 2.1 (bottom-right causal alignment) through varlen. Otherwise pairs run whole."""
    attn = str(backbone.config._attn_implementation)
    if attn == "flash_attention_2":
        from transformers.utils import is_flash_attn_greater_or_equal

        return is_flash_attn_greater_or_equal("2.1.0")
    return attn in ("sdpa", "eager")


@torch.inference_mode()
def forward_suffixes(backbone: Any, rows: Sequence[SuffixRow]) -> torch.Tensor:
    """One pass over suffix rows (of one or several prefixes); returns each row's final hidden state
    (normed) at its last token, ``(len(rows), hidden)``."""
    lm, device = backbone.language_model, backbone.device
    lengths = [len(r.ids) for r in rows]
    ids, mask = _left_padded([r.ids for r in rows])
    vision = [v for r in rows for v in r.vision]
    positions = _rope_positions(backbone, ids, mask, vision)
    positions += torch.tensor([r.prefix.next_position for r in rows])[None, :, None]
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    embeds, visual, deepstack = _embed(backbone, ids, vision)
    prefixes = list({id(r.prefix): r.prefix for r in rows}.values())
    index = {id(p): j for j, p in enumerate(prefixes)}
    row_prefix = [index[id(r.prefix)] for r in rows]
    if uses_varlen(backbone):
        return lm.norm(_packed_pass(lm, embeds, positions, mask, visual, deepstack, prefixes, row_prefix, lengths))
    width = max(p.length for p in prefixes)
    attn = _suffix_mask(torch.tensor([r.prefix.length for r in rows]), width, mask, embeds.dtype,
                        boolean=lm.config._attn_implementation == "sdpa")
    cache = _Prepend(prefixes, row_prefix, width, None)
    hidden = _run_layers(lm, embeds, positions, attn, cache, visual, deepstack)
    return lm.norm(hidden[:, -1])


def _packed_pass(lm: Any, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                 visual: torch.Tensor | None, deepstack: list[torch.Tensor] | None, prefixes: list[PrefixKV],
                 row_prefix: list[int], lengths: list[int]) -> torch.Tensor:
    """The suffix pass for flash-attention: rows packed with no padding, varlen with bottom-right causal."""
    keep = mask.bool()
    ends = torch.tensor(lengths).cumsum(0)
    spans = [(int(e) - n, int(e)) for e, n in zip(ends, lengths, strict=True)]
    key_lengths = [prefixes[j].length + n for j, n in zip(row_prefix, lengths, strict=True)]
    zero = torch.zeros(1, dtype=torch.int32)
    kwargs = {"cu_seq_lens_q": torch.cat([zero, ends.int()]).to(embeds.device),
              "cu_seq_lens_k": torch.cat([zero, torch.tensor(key_lengths).cumsum(0).int()]).to(embeds.device),
              "max_length_q": max(lengths), "max_length_k": max(key_lengths)}
    cache = _Prepend(prefixes, row_prefix, 0, spans)
    packed_visual = visual[keep][None] if visual is not None else None
    hidden = _run_layers(lm, embeds[keep][None], positions[:, keep][:, None], None, cache, packed_visual,
                         deepstack, **kwargs)
    return hidden[0, ends - 1]
