"""Model builders keyed by the catalogue's rows (``spec/catalogue.py``), their pretrained weights and
the functions that run them: ``registry.py`` builds a model by name, one module per backend."""
