"""Stand-in for tensorrt_llm_bls/1/model.py of the release: its initialize() reads its parameters as the real one does.

TritonPythonModel.initialize(): every parameter through get_valid_param_value(params.get(name, {}), default), which
takes a value that starts with "${" (left by fill_template.py) or is empty as unset; decoupled from the model's
transaction policy (pb_utils.using_decoupled_model_transaction_policy).
"""

import json

import triton_python_backend_utils as pb_utils


def get_valid_param_value(param, default_value=""):
    value = param.get("string_value", "")
    return default_value if value.startswith("${") or value == "" else value


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        params = model_config["parameters"]
        self.accumulate_tokens = get_valid_param_value(params.get("accumulate_tokens", {})).lower() in [
            "true", "yes", "1", "t"]
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(model_config)
        self.llm_model_name = get_valid_param_value(params.get("tensorrt_llm_model_name", {}), "tensorrt_llm")
        self.draft_llm_model_name = get_valid_param_value(params.get("tensorrt_llm_draft_model_name", {}), None)
        self.multimodal_encoders_name = get_valid_param_value(params.get("multimodal_encoders_name", {}), None)
