"""The embedding map: items embedded through the queue, laid out in 2-D (t-SNE or PCA), drawn and exported
(``rerankq map``; the gateway's ``POST /v1/map`` and the console's Map panel use the layout)."""
