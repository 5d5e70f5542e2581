"""The decoders warmload runs: registry.py is the one list of architectures (by GGUF
`general.architecture` name); each models/<arch>.py owns one (see registry.py). Importing this
package imports neither torch nor any architecture (ARCHITECTURES imports one when read)."""

from warmload.models.registry import MODULES as ARCHITECTURES  # noqa: F401  name -> module
