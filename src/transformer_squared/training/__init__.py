"""Training experts: objectives (reinforce, rloo, grpo, sft), the loop, the LoRA baseline and evaluation."""
