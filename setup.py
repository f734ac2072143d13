from setuptools import find_packages, setup

setup(
    name='snella-seg',
    version='0.1.0',
    description='SNELLA sparse kernelized fine-tuning of ViT and SAM backbones for semantic segmentation',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['snella_seg', 'snella_seg.*']),
    # The project's configs, for `snella_seg::` bases: snella_seg/.mim/configs links to configs/ in the clone (and in
    # an editable install); a wheel gets real copies.
    package_data={'snella_seg': ['.mim/configs/**/*.py', '.mim/configs/**/*.md']},
    python_requires='>=3.9',
    # mmcv is not listed: users keep their compiled mmcv 2.1, or install mmcv-lite from requirements.txt.
    install_requires=['torch', 'torchvision', 'mmengine>=0.10,<1.0', 'mmsegmentation>=1.2,<1.3', 'timm>=1.0',
                      'opencv-python-headless', 'safetensors', 'matplotlib', 'ftfy', 'regex', 'setuptools<81',
                      'pooch>=1.8', 'requests', 'tqdm', 'peft==0.21.2'],
)
