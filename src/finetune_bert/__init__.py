"""finetune-bert: fine-tune BERT-family encoders for text classification.

    from finetune_bert import train, load
    result = train(data="reviews.csv", model="minilm", output="out/")
    load("out/").predict("I loved it")   # Prediction(label='positive', confidence=0.97)
"""

from finetune_bert.config import Reading, TrainConfig, TuneConfig
from finetune_bert.errors import UserError
from finetune_bert.evaluate import evaluate
from finetune_bert.predict import Classifier, Prediction, load
from finetune_bert.launch import train
from finetune_bert.train import TrainResult
from finetune_bert.tune import tune

__version__ = "0.1.0"
__all__ = ["train", "load", "evaluate", "tune", "TrainConfig", "TuneConfig", "TrainResult", "Classifier", "Prediction",
           "Reading", "UserError", "__version__"]
