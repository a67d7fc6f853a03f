"""The FlexAvatar network, its config, the Avatar and ``.avatar`` files."""

from flexavatar.model.avatar import Avatar, load_avatar
from flexavatar.model.config import CONFIGS, FlexAvatarConfig, get_config, resolve_config
from flexavatar.model.network import FlexAvatarModel

__all__ = ["Avatar", "load_avatar", "CONFIGS", "FlexAvatarConfig", "get_config", "resolve_config", "FlexAvatarModel"]
