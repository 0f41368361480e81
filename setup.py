"""Packaging: every setting lives in settings.ini (nbdev 2); edit there, not here."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

config = ConfigParser(delimiters=["="])
config.read("settings.ini", encoding="utf-8")
cfg = config["DEFAULT"]

requirements = cfg.get("requirements", "").split()
dev_requirements = cfg.get("dev_requirements", "").split()
console_scripts = cfg.get("console_scripts", "").split()

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=Path("README.md").read_text(encoding="utf-8") if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    author=cfg["author"],
    license=cfg["license"],
    author_email=cfg["author_email"],
    keywords=cfg["keywords"].split(),
    url=cfg["git_url"],
    project_urls={"Documentation": cfg["doc_host"] + cfg["doc_baseurl"]},
    classifiers=["Programming Language :: Python :: 3.11", "Topic :: Scientific/Engineering :: Medical Science Apps."],
    python_requires=">=" + cfg["min_python"],
    packages=setuptools.find_packages(include=["echoflow", "echoflow.*"]),
    include_package_data=True,
    package_data={"echoflow": ["presets/*.yaml"]},
    install_requires=requirements,
    extras_require={"dev": dev_requirements},
    entry_points={"console_scripts": console_scripts, "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
