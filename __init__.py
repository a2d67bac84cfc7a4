"""vitsuite: vision-transformer models of five fields behind one shared backbone core.

Layers (imports point down only): ``vitsuite.apps`` -> ``vitsuite.pipelines`` -> ``vitsuite.core``.
``vitsuite.models`` is the public face of the model registry.
"""

__version__ = "0.1.0"
