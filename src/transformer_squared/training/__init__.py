"""Training experts: objectives (reinforce, rloo, sft), the loop, the LoRA baseline and evaluation."""
