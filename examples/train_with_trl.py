"""Train an SVF expert with TRL's GRPOTrainer (or SFTTrainer) on a t2 task, and save it as a t2 expert.

    pip install -e ".[trl]"
    python examples/train_with_trl.py --task arithmetic --steps 20 --out experts/arithmetic-trl
    t2 eval --task arithmetic --n 200 --expert experts/arithmetic-trl

The t2 task supplies the prompts (with the model's chat template applied, as `t2 train` samples them) and the
reward: a task's `reward(prompts, completions, **columns)` already has TRL's reward-function signature.
"""

from __future__ import annotations

import argparse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--task", default="arithmetic")
    p.add_argument("--data", default=None)
    p.add_argument("--trainer", choices=("grpo", "sft"), default="grpo")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--group", type=int, default=4, help="grpo: completions per prompt")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--out", default="experts/trl-expert")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()

    from transformer_squared.integrations.trl import SVFExpertModel, require_trl, trainer_args

    trl = require_trl()
    from datasets import Dataset

    from transformer_squared.generation import chat_text
    from transformer_squared.tasks import get_task
    from transformer_squared.evaluation import default_max_new_tokens

    task = get_task(args.task, args.data)
    svf = SVFExpertModel.load(args.model)
    examples = task.examples("train")
    columns = [k for k in examples[0] if k not in ("prompt", "completion") and isinstance(examples[0][k], (str, int, float))]
    rows = {"prompt": [chat_text(svf.tokenizer, e["prompt"]) for e in examples]}
    rows.update({k: [e[k] for e in examples] for k in columns})
    common = dict(max_steps=args.steps, learning_rate=args.lr, logging_steps=1, seed=0, lr_scheduler_type="constant")
    try:
        if args.trainer == "grpo":
            def reward(prompts, completions, **cols):  # TRL passes the chat-formatted prompt; the task scores answers
                return task.reward(prompts, completions, **{k: cols[k] for k in columns})

            config = trl.GRPOConfig("runs/trl-grpo", **trainer_args(
                per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
                max_completion_length=default_max_new_tokens(task), temperature=1.0, **common))
            trainer = trl.GRPOTrainer(model=svf.model, processing_class=svf.tokenizer, reward_funcs=reward,
                                      train_dataset=Dataset.from_dict(rows), args=config)
        else:
            refs = [e.get("reference") for e in examples]
            if any(r is None for r in refs):
                raise SystemExit(f"--trainer sft needs reference answers; task {task.name!r} has none")
            data = Dataset.from_dict({"prompt": rows["prompt"], "completion": refs})
            config = trl.SFTConfig("runs/trl-sft", **trainer_args(per_device_train_batch_size=args.prompts, **common))
            trainer = trl.SFTTrainer(model=svf.model, processing_class=svf.tokenizer, train_dataset=data, args=config)
        trainer.train()
        folder = svf.save_expert(args.out, overwrite=args.overwrite, domain=task.domain, description=task.description,
                                 created_by={"method": "trl", "trainer": args.trainer, "steps": args.steps})
    finally:
        svf.close()
    print(f"saved {folder}: t2 eval --task {args.task} --n 200 --expert {folder}")


if __name__ == "__main__":
    main()
