"""The trained model in the user's hands: one loader (`load.py`), one predict (`predict.py`), the inputs
it accepts (`images.py`), and a checkpoint's test metrics (`evaluate.py`)."""
