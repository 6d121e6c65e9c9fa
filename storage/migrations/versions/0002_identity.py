"""Schema 2: paths as raw bytes with device and inode, a folder table, the generation log,
removals, and a library id. Old rows keep their paths; device and inode are read where files
exist (0 where they are gone)."""

import os
import uuid

import sqlalchemy as sa
from alembic import op

from vitdex.storage.files import from_db, to_db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

AUTOINCREMENT = {"sqlite_autoincrement": True}  # kept when SQLite's batch mode rebuilds images
TO_BYTES = "convert_to(path, 'UTF8')"  # PostgreSQL: text -> bytea (SQLite casts to BLOB)


def upgrade() -> None:
    op.create_table(
        "folders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.LargeBinary, nullable=False, unique=True),
    )
    op.create_table(
        "generations",
        sa.Column("generation", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("token", sa.String(32), nullable=False),
    )
    op.create_table(
        "removals",
        sa.Column("image_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("generation", sa.Integer, nullable=False),
    )
    op.create_index("ix_removals_generation", "removals", ["generation"])
    # Some 0.1 databases carried these indexes; they are made again below.
    op.execute("DROP INDEX IF EXISTS ix_images_content_id")
    op.execute("DROP INDEX IF EXISTS ix_images_generation")
    with op.batch_alter_table("images", table_kwargs=AUTOINCREMENT) as batch:
        batch.alter_column(
            "path", type_=sa.LargeBinary, existing_type=sa.Text, existing_nullable=False,
            postgresql_using=TO_BYTES,
        )  # fmt: skip
        batch.add_column(sa.Column("folder_id", sa.Integer))
        batch.add_column(sa.Column("device", sa.BigInteger))
        batch.add_column(sa.Column("inode", sa.BigInteger))
    with op.batch_alter_table("failures") as batch:
        batch.alter_column(
            "path", type_=sa.LargeBinary, existing_type=sa.Text, existing_nullable=False,
            postgresql_using=TO_BYTES,
        )  # fmt: skip
    _fill_identity(op.get_bind())
    with op.batch_alter_table("images", table_kwargs=AUTOINCREMENT) as batch:
        batch.alter_column("folder_id", existing_type=sa.Integer, nullable=False)
        batch.alter_column("device", existing_type=sa.BigInteger, nullable=False)
        batch.alter_column("inode", existing_type=sa.BigInteger, nullable=False)
        batch.create_foreign_key("fk_images_folder_id_folders", "folders", ["folder_id"], ["id"])
        batch.create_index("ix_images_folder_id", ["folder_id"])
        batch.create_index("ix_images_content_id", ["content_id"])
        batch.create_index("ix_images_generation", ["generation"])
    _log_generation_and_library_id(op.get_bind())


def _fill_identity(conn: sa.Connection) -> None:
    images = sa.table(
        "images", sa.column("id"), sa.column("path", sa.LargeBinary), sa.column("folder_id"),
        sa.column("device"), sa.column("inode"),
    )  # fmt: skip
    folders = sa.table("folders", sa.column("id"), sa.column("path", sa.LargeBinary))
    folder_ids: dict[bytes, int] = {}
    for image_id, raw in conn.execute(sa.select(images.c.id, images.c.path)).all():
        path = from_db(raw)
        folder = to_db(os.path.dirname(path))
        if folder not in folder_ids:
            folder_ids[folder] = conn.execute(
                folders.insert().values(path=folder).returning(folders.c.id)
            ).scalar_one()
        try:
            st = os.stat(path)
            device, inode = st.st_dev, st.st_ino
        except OSError:
            device = inode = 0
        conn.execute(
            images.update().where(images.c.id == image_id)
            .values(folder_id=folder_ids[folder], device=device, inode=inode)
        )  # fmt: skip


def _log_generation_and_library_id(conn: sa.Connection) -> None:
    meta = sa.table("meta", sa.column("key"), sa.column("value"))
    generations = sa.table("generations", sa.column("generation"), sa.column("token"))
    generation = conn.scalar(sa.select(meta.c.value).where(meta.c.key == "generation"))
    if generation is not None:
        conn.execute(
            generations.insert().values(generation=int(generation), token=uuid.uuid4().hex)
        )
    if conn.scalar(sa.select(meta.c.value).where(meta.c.key == "library_id")) is None:
        conn.execute(meta.insert().values(key="library_id", value=uuid.uuid4().hex))
