"""Schema 1, as vitdex 0.1 shipped it: images and failed files keyed by text paths.

Revision ids are the schema version, four digits ("0001" is schema 1): a SQLite library from
before Alembic (PRAGMA user_version N) is stamped with revision N, then upgraded.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "specs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String, nullable=False, unique=True),
        sa.Column("model_id", sa.Text, nullable=False),
        sa.Column("revision", sa.Text, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("spec_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "contents",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("format", sa.String),
        sa.Column("taken_at", sa.String),
        sa.Column("camera_make", sa.String),
        sa.Column("camera_model", sa.String),
    )
    op.create_table(
        "vectors",
        sa.Column(
            "content_id",
            sa.Integer,
            sa.ForeignKey("contents.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("spec_id", sa.Integer, sa.ForeignKey("specs.id"), primary_key=True),
        sa.Column("feature", sa.String, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.Text, nullable=False, unique=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("content_id", sa.Integer, sa.ForeignKey("contents.id"), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("added_at", sa.DateTime, nullable=False),
        sqlite_autoincrement=True,  # a removed image's id (its FAISS id) is never reused
    )
    op.create_table(
        "failures",
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("failed_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "probes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String, nullable=False, unique=True),
        sa.Column("spec_id", sa.Integer, sa.ForeignKey("specs.id"), nullable=False),
        sa.Column("spec_key", sa.String, nullable=False),
        sa.Column("feature", sa.String, nullable=False),
        sa.Column("classes_json", sa.Text, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("weights", sa.LargeBinary, nullable=False),
        sa.Column("bias", sa.LargeBinary, nullable=False),
        sa.Column("metrics_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "predictions",
        sa.Column(
            "probe_id", sa.Integer, sa.ForeignKey("probes.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column(
            "image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("label", sa.String, nullable=False),
        sa.Column("score", sa.Double, nullable=False),
    )
    op.create_index("ix_predictions_label", "predictions", ["probe_id", "label"])
