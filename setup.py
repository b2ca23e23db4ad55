from setuptools import find_packages, setup

setup(
    name="jaxrlhf",
    version="0.1.0",
    description="Reward models and PPO (RLHF) in JAX/Flax NNX, sharded over device meshes.",
    packages=find_packages(include=["jaxrlhf", "jaxrlhf.*"]),
    package_data={"jaxrlhf": ["data/builtin/*", "configs/*.py", "feedback/static/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax",
        "orbax-checkpoint",
        "chex",
        "transformers>=4.50",
        "tokenizers",
        "datasets",
        "ml_collections",
        "safetensors",
        "huggingface_hub",
        "gguf",
        "absl-py",
        "numpy",
        "tqdm",
        "matplotlib",
        "tensorboardX",
        # The reward-model server (jaxrlhf.serve) and the annotation server: a small, well-kept ASGI framework
        # and its usual server.
        "starlette>=0.40",
        "uvicorn>=0.30",
    ],
    extras_require={
        # torch only for the PyTorch reference models the tests compare against.
        # nbclient and ipykernel run the Colab notebook in tests/test_notebook.py.
        # httpx is what Starlette's TestClient drives the servers' apps with (tests/test_serve.py).
        # playwright drives the system's Chromium in the annotation app's browser tests (its own browser
        # download is never used); psycopg runs the annotation store against a real PostgreSQL server.
        "test": ["torch==2.13.0", "pytest", "ruff==0.17.6", "sentencepiece", "nbclient", "ipykernel", "httpx",
                 "playwright>=1.40", "psycopg[binary]>=3.1"],
        # The annotation server on PostgreSQL (`--db=postgresql://...`); SQLite needs nothing.
        "postgres": ["psycopg[binary]>=3.1"],
    },
)
