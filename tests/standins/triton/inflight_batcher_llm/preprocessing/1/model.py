"""Stand-in for preprocessing/1/model.py of the release: its initialize() reads its parameters as the real one does.

TritonPythonModel.initialize() in the 1.2-era file: `tokenizer_dir` and `multimodal_model_path` are read by
indexing (`model_config['parameters'][name]['string_value']`: a KeyError when the block is missing), the latter
compared with the literal "${multimodal_model_path}" (unset, as fill_template.py leaves it); `add_special_tokens`
and `max_num_images` with .get() (absent or not a boolean/number: a default, with a warning). The tokenizer is
then loaded from tokenizer_dir (AutoTokenizer.from_pretrained: the stand-in checks the dir exists). Tensor
dtypes are not read here (the stand-in templates carry a few tensors only).
"""

import json
import os


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        tokenizer_dir = model_config["parameters"]["tokenizer_dir"]["string_value"]
        add_special_tokens = model_config["parameters"].get("add_special_tokens")
        multimodal_model_path = model_config["parameters"]["multimodal_model_path"]["string_value"]
        max_num_images = model_config["parameters"].get("max_num_images")
        if max_num_images is not None and max_num_images["string_value"].isdigit():
            self.max_num_images = int(max_num_images["string_value"])
        else:
            self.max_num_images = None
        if multimodal_model_path == "${multimodal_model_path}" or multimodal_model_path == "":
            multimodal_model_path = None
        value = (add_special_tokens or {}).get("string_value", "").lower()
        truthy = ["true", "false", "1", "0", "t", "f", "y", "n", "yes", "no"]
        self.add_special_tokens = value in ["true", "1", "t", "y", "yes"] if value in truthy else True
        if not os.path.isdir(tokenizer_dir):  # AutoTokenizer.from_pretrained(tokenizer_dir) raises OSError
            raise OSError(f"Can't load tokenizer for '{tokenizer_dir}'")
        self.is_multimodal = multimodal_model_path is not None
        if self.is_multimodal:
            with open(os.path.join(multimodal_model_path, "config.json")) as f:
                json.load(f)
            llm_model_path = model_config["parameters"]["gpt_model_path"]["string_value"]
            with open(os.path.join(llm_model_path, "config.json")) as f:
                json.load(f)
