"""Synthetic abdominal MRI in the competition's exact layout, for tests, benchmarks and the demo.

:func:`make_phantom` writes a complete data root: ``train.csv``, ``train/``, ``test/``,
``sample_submission.csv`` (empty predictions) and ``test_truth.csv`` (the labels of ``test/``).
Each case is one random anatomy drawn in millimetres and sliced axially. It is built to be as
hard as the real scans, not just to look like them:

* a body outline with subcutaneous fat and a muscle wall; liver (with bright vessels),
  gallbladder, spleen, kidneys, pancreas, psoas, spine, aorta and vena cava (bright or dark round
  vessels), mesenteric vessels, lung bases and heart on top, bladder, hip bones and buttock
  muscles low down. Intensities overlap the organs': fat, fluid and blood are all bright, bowel
  wall is as dark as muscle and liver;
* the small bowel as dozens of tubular loops packed into the mid-abdomen (a self-avoiding walk
  through a warped lattice), so an axial slice through the mid-abdomen cuts it into some 10 to 35
  separate pieces, most under 25 mm across, with contents that change from loop to loop: fluid
  (as bright as fat), chyme (intermediate), collapsed (as dark as muscle); mesenteric vessels
  and lymph nodes of the same size and brightness lie between the loops;
* a large bowel that frames the abdomen (ascending, transverse, descending, sigmoid, rectum),
  filled with mottled stool or fluid and labelled with its lumen, except for a gas-distended
  segment labelled as its wall only: ring-shaped masks with holes;
* a stomach in the upper slices only, holding fluid, food or little, with gas in front of its
  air-fluid level;
* organs in a band of the z range only, so about half of the slices carry no label;
* a smooth bias field, Rician noise and a 16-bit gain that differs by case-day (scan maxima from
  about 1,000 to about 20,000 across the case-days of a build).

The traps of the real data are kept: scan sizes and spacings are the competition's (266x266,
360x310 W x H, 276x276 at 1.63 mm, 234x234; 144 or 80 slices), the first train and test cases are
always 360x310, the second train case is 234x234 with the body off-centre so that organs touch
the image border, test-only patients never appear in training, and later days of a case (some in
``test/``) reuse its anatomy, shifted and smoothly deformed. Everything is deterministic for a
seed (byte-identical files, whatever the number of worker processes).

Modules: :mod:`~uwm_d2.phantom.shapes` (ellipsoids, tubes and the nominal frame, in mm),
:mod:`~uwm_d2.phantom.bowel` (the labelled organs), :mod:`~uwm_d2.phantom.anatomy` (the rest of a
case's body, a later day's deformation), :mod:`~uwm_d2.phantom.render` (one slice's pixels and
masks; bias, noise, gain), :mod:`~uwm_d2.phantom.layout_writer` (the plan, and the data root it
writes; :mod:`uwm_d2.core.layout_reader` reads it back). No torch here.
"""

from uwm_d2.phantom.layout_writer import GEOMETRIES, PhantomSummary, ScanGeometry, make_phantom

__all__ = ["GEOMETRIES", "PhantomSummary", "ScanGeometry", "make_phantom"]
