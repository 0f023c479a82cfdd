"""The lesion/histology CNN: a small Keras 3 model on 2.5-D patches with two named outputs.

Built from keras.layers only (no backend-specific ops), so a saved .keras file loads and gives
the same numbers on the TensorFlow, JAX and PyTorch backends.
"""

from __future__ import annotations

import keras

from classifier.model.patches import PATCH_SHAPE
from classifier.types import HISTOLOGY_CLASSES

MODEL_NAME = "lungnode_demo"
LESION_OUTPUT = "lesion"
HISTOLOGY_OUTPUT = "histology"


def _conv_block(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    """Two 3x3 convolutions with batch norm and ReLU, then 2x2 max pooling."""
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(
            x
        )
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return keras.layers.MaxPooling2D(2, name=f"{name}_pool")(x)


def build_model(name: str = MODEL_NAME, dropout: float = 0.3) -> keras.Model:
    """Build the CNN: input PATCH_SHAPE (rows, cols, channels), outputs `lesion` (n, 1) sigmoid
    and `histology` (n, 4) softmax over HISTOLOGY_CLASSES."""
    inputs = keras.Input(shape=PATCH_SHAPE, name="patch")
    x = _conv_block(inputs, 16, "block1")  # 32 x 32
    x = _conv_block(x, 32, "block2")  # 16 x 16
    x = _conv_block(x, 48, "block3")  # 8 x 8
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="block4_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    shared = keras.layers.Dense(64, activation="relu", name="shared_dense")(x)
    lesion = keras.layers.Dense(1, activation="sigmoid", name=LESION_OUTPUT)(shared)
    histology = keras.layers.Dense(
        len(HISTOLOGY_CLASSES), activation="softmax", name=HISTOLOGY_OUTPUT
    )(shared)
    return keras.Model(inputs, {LESION_OUTPUT: lesion, HISTOLOGY_OUTPUT: histology}, name=name)
