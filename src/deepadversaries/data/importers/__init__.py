"""Input formats of ``deepadv import``: what they share (``base``), one module per format (``fits``, ``hdf5``,
``npy``) and the registry the command line derives from (``registry``)."""
