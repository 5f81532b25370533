"""vizloc-example-plugin: the documented example of a third-party vizloc_ros localizer plugin.

It registers one localizer type, ``example_color`` (:mod:`.plugin`), implemented in
:mod:`.localizer`; :func:`make_bundle` writes a model bundle for it (:mod:`.bundle`).
Read docs/plugins.md of vizloc_ros alongside this code.
"""
from .bundle import make_bundle
from .localizer import LOCALIZER_TYPE, PALETTE, ExampleColorLocalizer, ExampleColorOptions

__all__ = ['LOCALIZER_TYPE', 'PALETTE', 'ExampleColorLocalizer', 'ExampleColorOptions', 'make_bundle']
__version__ = '0.1.0'
