"""Write a trained causal LM as a GGUF file for llama.cpp (and Ollama, LM Studio, transformers' GGUF loader).

    python -m jaxrlhf.export_gguf --model=runs/sft/export --out=sft.q8_0.gguf --type=q8_0

--model: an exported HF directory, a train_sft/train_ppo/train_dpo workdir (its export/), an asset alias
or a PEFT LoRA adapter directory (merged into its base). Llama, Mistral, SmolLM2 and Qwen2 decoders with
a byte-level BPE tokenizer; reward models, critics and encoders are refused. --type: f32, f16, bf16,
q8_0, q5_0, q5_1, q4_0, q4_1 (norms and biases stay F32; see jaxrlhf/models/gguf_export.py).
"""

from __future__ import annotations

from absl import flags

from jaxrlhf.infra.runtime import cli_errors, run_app
from jaxrlhf.models.gguf_export import export_gguf

flags.DEFINE_string("model", None, "Exported HF directory, trainer workdir, asset alias or LoRA adapter.",
                    required=True)
flags.DEFINE_string("out", None, "GGUF file to write.", required=True)
flags.DEFINE_string("type", "f16", "Tensor type: f32, f16, bf16, q8_0, q5_0, q5_1, q4_0, q4_1.")
flags.DEFINE_string("name", None, "general.name in the file (default: the model's name or directory).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    with cli_errors():
        report = export_gguf(FLAGS.model, FLAGS.out, FLAGS.type, name=FLAGS.name)
        types = ", ".join(f"{n} {t}" for t, n in sorted(report.tensor_types.items()))
        print(f"wrote {report.path} ({report.bytes / 2**20:.1f} MiB, {report.type}: {types} tensors)")
        for note in report.notes:
            print(f"  note: {note}")


if __name__ == "__main__":
    run_app(main)
