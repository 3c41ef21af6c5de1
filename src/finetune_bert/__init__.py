"""finetune-bert: fine-tune BERT-family encoders for text classification.

    from finetune_bert import train, load
    result = train(data="reviews.csv", model="minilm", output="out/")
    load("out/").predict("I loved it")   # Prediction(label='positive', confidence=0.97)
"""

from finetune_bert.errors import UserError

__version__ = "0.1.0"
__all__ = ["train", "load", "evaluate", "UserError", "__version__"]


def __getattr__(name: str):
    # Lazy: `import finetune_bert` stays cheap; torch and transformers load on first use.
    if name == "train":
        from finetune_bert.train import train
        return train
    if name == "load":
        from finetune_bert.predict import load
        return load
    if name == "evaluate":
        from finetune_bert.evaluate import evaluate
        return evaluate
    raise AttributeError(name)
