"""What flows may use of the vendor clients directly: the data types the tasks return and pure helpers on values.

Flows reach vendors only through `tasks/`; what a task hands back (a Deployment, a DatabaseHealth, …) and the
values a flow's parameters are made of are named here, so a flow never imports a client module. Nothing here calls
a vendor. (The types are defined beside their client, where the vendor's published spec shapes them; this module
names the ones flows use.)
"""

from runbook.clients.app import AppHealth
from runbook.clients.sentry import SeriesPoint
from runbook.clients.supabase import DatabaseHealth, LongQuery, MigrationFile, MigrationStatus, parse_version
from runbook.clients.supabase_admin import Backup, DownScript, sha256_file
from runbook.clients.vercel import Deployment

__all__ = [
    "AppHealth",
    "Backup",
    "DatabaseHealth",
    "Deployment",
    "DownScript",
    "LongQuery",
    "MigrationFile",
    "MigrationStatus",
    "SeriesPoint",
    "parse_version",
    "sha256_file",
]
