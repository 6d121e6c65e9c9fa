"""Schema 3: the checkpoint's own labels per content (empty for what was embedded before)."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "labels",
        sa.Column(
            "content_id",
            sa.Integer,
            sa.ForeignKey("contents.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("spec_id", sa.Integer, sa.ForeignKey("specs.id"), primary_key=True),
        sa.Column("rank", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("label_key", sa.Text, nullable=False),  # label.casefold(): what a tag matches
        sa.Column("score", sa.Double, nullable=False),
    )
    # Contents by label: the contents whose top label (rank 1) is a tag, best score first.
    op.create_index("ix_labels_key", "labels", ["spec_id", "rank", "label_key", "score"])
