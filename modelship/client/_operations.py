"""Every API call as a sans-I/O operation (see ``_protocol``): ``Client`` and
``AsyncClient`` expose each one under the same name, with the same arguments."""

from __future__ import annotations

from modelship.client._exports import Exports
from modelship.client._jobs import Jobs
from modelship.client._labeling import Labeling
from modelship.client._projects import Projects
from modelship.client._review import Review
from modelship.client._uploads import Uploads


class Api(Labeling, Projects, Uploads, Jobs, Review, Exports):
    """All the operations, configured once per client (see ``Base``)."""
