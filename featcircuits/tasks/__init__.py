"""Tasks and data: prompt pairs (``prompts``), IOI and parenthesis generators (``ioi``,
``parens``), the bundled model's corpus (``corpus``) and behaviour metrics (``evaluate``)."""

from featcircuits.tasks.ioi import default_prompts_path, ioi_prompt_pairs
from featcircuits.tasks.parens import generate_parens_texts, parens_prompt_pairs
from featcircuits.tasks.prompts import PromptPairs, read_prompts, tokenize_prompts

__all__ = [
    "PromptPairs",
    "default_prompts_path",
    "generate_parens_texts",
    "ioi_prompt_pairs",
    "parens_prompt_pairs",
    "read_prompts",
    "tokenize_prompts",
]
