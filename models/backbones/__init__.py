"""One module per backbone (Point-BERT, Point-MAE, Point-M2AE); ``models.classifier`` builds them.

``NPOINTS``: input points of each backbone's official fine-tuning recipe per dataset family
("scan" = ScanObjectNN, "modelnet" = ModelNet40 1k); plain data, importable without torch (the
result tables read it).
"""

NPOINTS: dict[str, dict[str, int]] = {
    "point_mae": {"scan": 2048, "modelnet": 1024},
    "point_bert": {"scan": 1024, "modelnet": 1024},
    "point_m2ae": {"scan": 2048, "modelnet": 1024},
}
