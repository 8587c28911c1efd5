"""The plugin system: registrations, the registry that orders and initialises them, the pluggy
hook specs third parties implement, and the registrations of ctrd's built-ins."""

from ctrd.plugins.hookspec import hookimpl
from ctrd.plugins.registration import InitContext, Meta, Plugin, Registration

__all__ = ["hookimpl", "InitContext", "Meta", "Plugin", "Registration"]
