"""The model card's training-data bullets of the built-in stages (their registry entries' ``card``): each takes
the stage's manifest and returns one Markdown bullet with the numbers that say how much data and training went
in."""

from __future__ import annotations


def _n(m: dict, key: str):
    return (m.get("counts") or {}).get(key)


def expand(m: dict) -> str:
    return f"- expand: {_n(m, 'accepted')} new prompts over {_n(m, 'traits_expanded')} traits"


def distill(m: dict) -> str:
    return (f"- distill: {_n(m, 'pairs')} DPO pairs (chosen: the teacher with the constitution; rejected: the "
            f"student without it) from {_n(m, 'generations')} generations")


def dpo(m: dict) -> str:
    return f"- DPO: {_n(m, 'steps')} steps on {_n(m, 'pairs')} pairs, loss {_n(m, 'train_loss')}"


def introspect(m: dict) -> str:
    return (f"- introspection: {_n(m, 'sft_rows')} SFT transcripts ({_n(m, 'sft_reflection')} self-reflections, "
            f"{_n(m, 'sft_interaction')} self-interactions)")


def sft(m: dict) -> str:
    return f"- SFT: {_n(m, 'steps')} steps on {_n(m, 'examples')} transcripts"


def merge(m: dict) -> str:
    return (f"- persona adapter rank: {_n(m, 'persona_adapter_rank')} (the DPO and SFT adapters' ranks "
            "concatenated, so it equals the folded model)")
