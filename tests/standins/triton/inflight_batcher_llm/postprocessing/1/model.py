"""Stand-in for postprocessing/1/model.py of the release: its initialize() reads its parameters as the real one does.

TritonPythonModel.initialize(): `tokenizer_dir` by indexing (KeyError when the block is missing), then the tokenizer
is loaded from it (the stand-in checks the dir exists); `skip_special_tokens` with .get() (absent or not a boolean:
True, with a warning).
"""

import json
import os


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        tokenizer_dir = model_config["parameters"]["tokenizer_dir"]["string_value"]
        skip = model_config["parameters"].get("skip_special_tokens")
        value = (skip or {}).get("string_value", "").lower()
        truthy = ["true", "false", "1", "0", "t", "f", "y", "n", "yes", "no"]
        self.skip_special_tokens = value in ["true", "1", "t", "y", "yes"] if value in truthy else True
        if not os.path.isdir(tokenizer_dir):  # AutoTokenizer.from_pretrained(tokenizer_dir) raises OSError
            raise OSError(f"Can't load tokenizer for '{tokenizer_dir}'")
