"""Who is calling: the verified identity a request carries through the control plane, and what
each role may do. Checked in services, not only in routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from llmaas.core.errors import PermissionDeniedError


class Role(StrEnum):
    ADMIN = "admin"  # platform admin: every tenant, the catalog, the audit log
    OWNER = "owner"  # manages its tenant's keys and limits, sees its usage and audit trail
    MEMBER = "member"  # uses models (inference, files, fine-tunes, evals), sees its tenant's usage
    READER = "reader"  # read-only: lists and reads, never creates, changes or spends


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget_pico: int | None = None
    budget_period: str = "monthly"
    budget_alert_fraction: float = 0.8

    @classmethod
    def of(cls, row: object) -> Limits:
        return cls(**{f: getattr(row, f) for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Principal:
    key_id: str | None
    tenant_id: str
    role: Role
    models: tuple[str, ...] | None = None  # allowed models; None = all
    key_limits: Limits = field(default_factory=Limits)
    tenant_limits: Limits = field(default_factory=Limits)
    label: str = "system"  # who acts when there is no key: "cli", "system"

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}" if self.key_id else self.label

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def can_use_model(self, model: str) -> bool:
        return self.models is None or model in self.models or (
            model.startswith("ft:") and any(model.startswith(f"ft:{m}:") for m in self.models)
        )

    def require(self, *roles: Role) -> None:
        """Admins pass every check; everyone else must hold one of `roles`."""
        if self.role is Role.ADMIN or self.role in roles:
            return
        raise PermissionDeniedError(
            f"This API key has role '{self.role}', which may not perform this action "
            f"(needs {' or '.join(r.value for r in roles) or 'admin'})."
        )

    def can_see_tenant(self, tenant_id: str) -> bool:
        return self.is_admin or self.tenant_id == tenant_id


# Roles allowed to spend (inference, fine-tunes, evals).
SPENDERS = (Role.OWNER, Role.MEMBER)


@dataclass(frozen=True)
class Context:
    """A principal plus where the call came from, for the audit trail."""

    principal: Principal
    source_ip: str | None = None
    request_id: str | None = None
