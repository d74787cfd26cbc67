"""Sizes, rates and site definitions of the synthetic environment, as one frozen config.

Presets fix the sizes (patients, pixels, slices); everything else has one default that every
preset shares, so a sweep over `regime` or `seed` changes nothing but what it names.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

COHORTS: tuple[str, ...] = ("archive", "internal", "external")


@dataclass(frozen=True)
class ScannerSite:
    """One hospital's scanner and coding practice (the things a cohort shift changes)."""

    site_id: int
    institution: str
    manufacturer: str
    model: str
    pixel_spacing_mm: float
    slice_spacing_mm: float
    n_slices: int
    noise_sd_hu: float
    blur_sigma_mm: float
    kvp: float


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a generated archive; same config -> byte-identical files."""

    preset: str = "demo"
    seed: int = 0
    regime: float = 0.0
    workers: int = 2
    n_archive: int = 300
    n_internal: int = 150
    n_external: int = 120
    image_size_px: int = 112
    n_slices: int = 48
    pixel_spacing_mm: float = 1.3
    slice_spacing_mm: float = 2.0
    max_scans: int = 3
    max_incidental: int = 2
    # mess rates (per study / per diagnostic series)
    localizer_rate: float = 0.3
    missing_slice_rate: float = 0.06
    non_ct_rate: float = 0.06
    # causal model
    label_strength: float = 1.6
    # the two views of the shared cause are imperfect at every site (docs/SYNTHETIC.md):
    # CT emphysema also has non-smoking causes, and EHRs leave smoking history unrecorded
    site_coupling: float = 0.85
    smoking_documented_rate: float = 0.7
    # most COPD is never diagnosed (docs/SYNTHETIC.md): the damage S reaches the EHR through
    # respiratory codes, inhalers, spirometry and J43/J44 only for this share of patients
    lung_damage_documented_rate: float = 0.4
    # external site: scanner and population shift
    external_spacing_factor: float = 1.12
    external_slice_factor: float = 1.25
    external_noise_factor: float = 1.7
    external_logit_shift: float = 0.7
    external_coupling: float = 0.4
    first_scan_year_min: int = 2012
    first_scan_year_max: int = 2019

    def __post_init__(self) -> None:
        if not 0.0 <= self.regime <= 1.0:
            raise ValueError(f"regime must lie in [0, 1], got {self.regime}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if min(self.n_archive, self.n_internal, self.n_external) < 1:
            raise ValueError("every cohort needs at least one patient")

    def n_patients(self, cohort: str) -> int:
        """Patients in one cohort."""
        return {
            "archive": self.n_archive,
            "internal": self.n_internal,
            "external": self.n_external,
        }[cohort]

    def site(self, cohort: str) -> ScannerSite:
        """The scanner of a cohort: archive and internal share site 1, external is site 2."""
        if cohort == "external":
            return ScannerSite(
                site_id=2,
                institution="Riverside Regional Hospital",
                manufacturer="Helios Medical",
                model="Helios CT 64",
                pixel_spacing_mm=round(self.pixel_spacing_mm * self.external_spacing_factor, 4),
                slice_spacing_mm=round(self.slice_spacing_mm * self.external_slice_factor, 4),
                n_slices=max(8, round(self.n_slices / self.external_slice_factor)),
                noise_sd_hu=18.0 * self.external_noise_factor,
                blur_sigma_mm=1.1,
                kvp=100.0,
            )
        return ScannerSite(
            site_id=1,
            institution="Lakeside University Medical Center",
            manufacturer="Acme Imaging",
            model="Acme Vista 128",
            pixel_spacing_mm=self.pixel_spacing_mm,
            slice_spacing_mm=self.slice_spacing_mm,
            n_slices=self.n_slices,
            noise_sd_hu=18.0,
            blur_sigma_mm=0.7,
            kvp=120.0,
        )


PRESETS: dict[str, dict[str, float | int]] = {
    # unit tests: whole generation in a few seconds
    "tiny": dict(
        n_archive=8,
        n_internal=8,
        n_external=6,
        image_size_px=48,
        n_slices=16,
        pixel_spacing_mm=3.0,
        slice_spacing_mm=6.0,
    ),
    # a sweep runs this many times (>= 4 regimes x 5 seeds), so a cell must stay near 4 min on
    # 2 cores. The unlabeled archive is >= 10x each fold's labeled training set (500 vs 48 of
    # the 60 labeled patients, 5-fold out of fold): the setting where self-supervision should
    # pay. Every labeled patient is tested once, so 5 seeds pool ~300 test patients per regime
    "study": dict(
        n_archive=500,
        n_internal=60,
        n_external=60,
        image_size_px=80,
        n_slices=32,
        pixel_spacing_mm=1.8,
        slice_spacing_mm=3.0,
    ),
    # the default data of the product: ~4 min on 2 cores. The unlabeled archive is 5x the
    # labeled internal cohort (self-supervision pays when the archive is many times the
    # labels); 130 labeled patients keep `make demo` within 15 min on 2 cores
    "demo": dict(
        n_archive=650,
        n_internal=130,
        n_external=110,
        image_size_px=112,
        n_slices=48,
        pixel_spacing_mm=1.3,
        slice_spacing_mm=2.0,
    ),
}


def preset_config(
    preset: str, seed: int = 0, regime: float = 0.0, workers: int = 2, **overrides: object
) -> SynthConfig:
    """A named preset with seed/regime/workers and any field overridden by keyword."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in fields(SynthConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown SynthConfig fields: {sorted(unknown)}")
    base = SynthConfig(preset=preset, seed=seed, regime=regime, workers=workers, **PRESETS[preset])
    return replace(base, **overrides) if overrides else base
