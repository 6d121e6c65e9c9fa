"""Every table of a library, in one place. The database is the source of truth, vectors included.

Paths are stored as raw OS bytes (see vitdex.storage.files), so names that are not UTF-8 are kept
and `under` is a case-sensitive range on the path index.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Small key/value facts: the library id, the generation, each feature's index kind."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Generation(Base):
    """One row per commit that changed vectors. Its random token tells an index file made from
    this database's history apart from one made from another history that reached the same
    number (a restored or re-created database)."""

    __tablename__ = "generations"
    generation: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    token: Mapped[str] = mapped_column(String(32))


class Spec(Base):
    """The embedding spec the library is bound to; every vector row points at it."""

    __tablename__ = "specs"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String, unique=True)
    model_id: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(Text)
    dim: Mapped[int]
    spec_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class Content(Base):
    """One distinct file content (by sha256): identical copies share it and are embedded once."""

    __tablename__ = "contents"
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    width: Mapped[int]
    height: Mapped[int]
    format: Mapped[str | None] = mapped_column(String)
    taken_at: Mapped[str | None] = mapped_column(String)
    camera_make: Mapped[str | None] = mapped_column(String)
    camera_model: Mapped[str | None] = mapped_column(String)


class Vector(Base):
    """A float32 L2-normalised vector of one content, for one feature of one spec."""

    __tablename__ = "vectors"
    content_id: Mapped[int] = mapped_column(
        ForeignKey("contents.id", ondelete="CASCADE"), primary_key=True
    )
    spec_id: Mapped[int] = mapped_column(ForeignKey("specs.id"), primary_key=True)
    feature: Mapped[str] = mapped_column(String, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Folder(Base):
    """A folder that holds images directly: the gallery's folder list without reading every path."""

    __tablename__ = "folders"
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[bytes] = mapped_column(LargeBinary, unique=True)


class Image(Base):
    """A real file in the library. Its id is its FAISS id: a move keeps it, a change of content
    re-tags it with the generation that set its new vectors."""

    __tablename__ = "images"
    # AUTOINCREMENT: a removed image's id (its FAISS id) is never handed to another image.
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[bytes] = mapped_column(LargeBinary, unique=True)  # canonical, raw OS bytes
    folder_id: Mapped[int] = mapped_column(ForeignKey("folders.id"), index=True)
    device: Mapped[int] = mapped_column(BigInteger)
    inode: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    content_id: Mapped[int] = mapped_column(ForeignKey("contents.id"), index=True)
    generation: Mapped[int] = mapped_column(index=True)
    added_at: Mapped[datetime]


class Removal(Base):
    """An image that left the library, and the generation that removed it: what an index file
    written before that generation must drop when it catches up."""

    __tablename__ = "removals"
    image_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(index=True)


class Failure(Base):
    """A file that could not be read, with why; retried only when it changes."""

    __tablename__ = "failures"
    path: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    error: Mapped[str] = mapped_column(Text)
    failed_at: Mapped[datetime]


class Probe(Base):
    """A saved linear probe: weights as raw float32 bytes (never pickle), bound to the spec."""

    __tablename__ = "probes"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    spec_id: Mapped[int] = mapped_column(ForeignKey("specs.id"))
    spec_key: Mapped[str] = mapped_column(String)
    feature: Mapped[str] = mapped_column(String)
    classes_json: Mapped[str] = mapped_column(Text)
    dim: Mapped[int]
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    bias: Mapped[bytes] = mapped_column(LargeBinary)
    metrics_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class Prediction(Base):
    """A probe's stored label for an image (from `probe predict --all`)."""

    __tablename__ = "predictions"
    probe_id: Mapped[int] = mapped_column(
        ForeignKey("probes.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    label: Mapped[str] = mapped_column(String)
    score: Mapped[float]


Index("ix_predictions_label", Prediction.probe_id, Prediction.label)


class Label(Base):
    """One of the checkpoint's own labels for a content (rank 1 is its top label), with the
    head's softmax probability. Identical copies share their content's labels."""

    __tablename__ = "labels"
    content_id: Mapped[int] = mapped_column(
        ForeignKey("contents.id", ondelete="CASCADE"), primary_key=True
    )
    spec_id: Mapped[int] = mapped_column(ForeignKey("specs.id"), primary_key=True)
    rank: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(Text)
    label_key: Mapped[str] = mapped_column(Text)  # label.casefold(): what a tag matches
    score: Mapped[float]


# Contents by label: the contents whose top label (rank 1) is a tag, best score first.
Index("ix_labels_key", Label.spec_id, Label.rank, Label.label_key, Label.score)
