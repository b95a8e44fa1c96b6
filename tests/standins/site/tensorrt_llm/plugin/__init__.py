"""Stand-in for tensorrt_llm.plugin: PluginConfig and add_plugin_argument."""

from .plugin import PluginConfig, add_plugin_argument, cli_plugin_args

__all__ = ["PluginConfig", "add_plugin_argument", "cli_plugin_args"]
