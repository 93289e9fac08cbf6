"""Projects: what to label, with which model, into which labels; and their items."""

from __future__ import annotations

from modelship.client._base import API, Base, Labels, Ref, label_specs, ref
from modelship.client._protocol import Operation, Request, send
from modelship.core.config import Task
from modelship.core.records import (
    Item,
    ItemsPage,
    Project,
    ProjectCreate,
    ProjectsResponse,
    ProjectUpdate,
)


class Projects(Base):
    def create_project(
        self,
        name: str,
        task: Task | str,
        model: str,
        *,
        labels: Labels | None = None,
        confidence_threshold: float = 0.5,
        auto_approve_threshold: float = 0.9,
    ) -> Operation[Project]:
        """A project labeling with ``model`` (a configured model doing ``task``)."""
        spec = ProjectCreate.model_validate(
            {
                "name": name,
                "task": task,
                "model": model,
                "labels": label_specs(labels),
                "confidence_threshold": confidence_threshold,
                "auto_approve_threshold": auto_approve_threshold,
            }
        )
        return (yield from self._post(f"{API}/projects", Project, spec.model_dump(mode="json")))

    def get_project(self, project: Ref) -> Operation[Project]:
        return (yield from self._get(f"{API}/projects/{ref(project)}", Project))

    def list_projects(self, *, include_archived: bool = False) -> Operation[list[Project]]:
        page = yield from self._get(
            f"{API}/projects", ProjectsResponse, include_archived=str(include_archived).lower()
        )
        return page.projects

    def update_project(
        self,
        project: Ref,
        *,
        name: str | None = None,
        labels: Labels | None = None,
        confidence_threshold: float | None = None,
        auto_approve_threshold: float | None = None,
    ) -> Operation[Project]:
        """Change the given fields; new labels make a new label schema version."""
        given = {
            "name": name,
            "labels": label_specs(labels),
            "confidence_threshold": confidence_threshold,
            "auto_approve_threshold": auto_approve_threshold,
        }
        change = ProjectUpdate.model_validate({k: v for k, v in given.items() if v is not None})
        body = change.model_dump(mode="json", exclude_unset=True)
        request = Request("PATCH", f"{API}/projects/{ref(project)}", json=body)
        reply = yield from send(request, self.retry)
        return reply.parse(Project)

    def archive_project(self, project: Ref) -> Operation[Project]:
        """What the API has for deleting: the project is archived (kept, read-only)."""
        return (yield from self._post(f"{API}/projects/{ref(project)}/archive", Project))

    def list_items(self, project: Ref, *, page_size: int = 1000) -> Operation[list[Item]]:
        """Every item of the project (all pages)."""
        path = f"{API}/projects/{ref(project)}/items"
        return (yield from self._pages(path, ItemsPage, lambda page: page.items, page_size))
